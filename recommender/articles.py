"""The Article record, parsing of JSONL/CSV input, and content hashing."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KNOWN_FIELDS = ("id", "title", "body", "url", "published", "section", "tags", "lang")
MAX_ID_LENGTH = 512
MAX_BODY_CHARS = 2_000_000


@dataclass(frozen=True)
class Article:
    id: str
    title: str
    body: str
    url: str | None = None
    published: str | None = None
    """ISO date ``YYYY-MM-DD`` or date-time ``YYYY-MM-DDTHH:MM:SS[+HH:MM]``."""
    section: str | None = None
    tags: tuple[str, ...] = ()
    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Hash of what is embedded: a change here means re-embedding."""
        return _sha256(self.title + "\x1f" + self.body)

    @property
    def record_hash(self) -> str:
        """Hash of the whole record: a change here means the stored row is updated."""
        return _sha256(json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        return data


@dataclass(frozen=True)
class Rejected:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_article(record: Any) -> Article:
    """Validate one input record; raise ``ValueError`` saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with id, title and body, got {type(record).__name__}")
    missing = [name for name in ("id", "title", "body") if record.get(name) is None]
    if missing:
        raise ValueError("missing field " + ", ".join(repr(m) for m in missing))
    article_id = record["id"]
    if isinstance(article_id, bool) or not isinstance(article_id, (str, int)):
        raise ValueError("'id' must be a string")
    article_id = str(article_id).strip()
    if not article_id:
        raise ValueError("'id' is empty")
    if len(article_id) > MAX_ID_LENGTH or any(ord(c) < 32 for c in article_id):
        raise ValueError(f"'id' must be at most {MAX_ID_LENGTH} printable characters")
    title, body = record["title"], record["body"]
    if not isinstance(title, str):
        raise ValueError("'title' must be a string")
    if not isinstance(body, str):
        raise ValueError("'body' must be a string")
    title, body = _clean(title), _clean(body)
    for name, text in (("id", article_id), ("title", title), ("body", body)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name!r} is not valid Unicode text (it holds a lone surrogate such as \\ud800)") from None
    if not body.strip():
        raise ValueError("'body' is empty")
    if len(body) > MAX_BODY_CHARS:
        raise ValueError(f"'body' is longer than {MAX_BODY_CHARS} characters")

    section = record.get("section")
    if section is None:
        section = record.get("category")
    metadata = {
        k: v for k, v in record.items() if k not in KNOWN_FIELDS and not (k == "category" and section == v)
    }
    return Article(
        id=article_id,
        title=title.strip(),
        body=body.strip(),
        url=_optional_str(record, "url"),
        published=parse_date(record.get("published")),
        section=_optional_str({"section": section}, "section"),
        tags=_parse_tags(record.get("tags")),
        lang=(_optional_str(record, "lang") or detect_language(title + ". " + body) or None),
        metadata=metadata,
    )


LANGUAGE_CONFIDENCE = 0.9
"""A detected language is kept only at this probability or above, and for
texts of at least ``LANGUAGE_MIN_WORDS`` words: a wrong guess would confine
the article's related list to another language."""
LANGUAGE_MIN_WORDS = 12
_identifier = None


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of the text's language (py3langid, 97 languages, offline),
    or None when the text is short or the guess is unsure."""
    global _identifier
    sample = text[:4000]
    if len(sample.split()) < LANGUAGE_MIN_WORDS:
        return None
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    lang, probability = _identifier.classify(sample)
    return str(lang) if float(probability) >= LANGUAGE_CONFIDENCE else None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    """Control characters (other than tab and line breaks) become spaces."""
    return _CONTROL.sub(" ", text)


def _optional_str(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string")
    return value.strip() or None


def _parse_tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("'tags' looks like a JSON list but does not parse") from None
        else:
            separator = "|" if "|" in text else ","
            value = text.split(separator)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("'tags' must be a list of strings (or a comma-separated string)")
    return tuple(dict.fromkeys(t.strip() for t in value if t.strip()))


def parse_date(value: Any) -> str | None:
    """Normalize a date or date-time to ISO 8601; raise ``ValueError`` if it is not one."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("'published' must be an ISO date string such as 2024-05-31")
    text = value.strip()
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text).isoformat()
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise ValueError(f"'published' is not an ISO date: {value!r}") from None


def read_articles(path: Path) -> Iterator[Article | Rejected]:
    """Yield an Article, or a Rejected line, for each record of a JSONL or CSV file."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv"):
        raise ValueError(f"{source}: unknown format {suffix!r}; use .jsonl or .csv")
    # surrogateescape: a line with bytes that are not UTF-8 is rejected by
    # itself (see _not_utf8) and the rest of the file is still read.
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if suffix == ".csv":
            yield from _read_csv(handle, source)
        else:
            yield from _read_jsonl(handle, source)


def _read_jsonl(handle, source: str) -> Iterator[Article | Rejected]:
    line_no = 0
    while True:
        line_no += 1
        try:
            line = handle.readline()
        except UnicodeDecodeError as exc:
            yield Rejected(source, line_no, f"not UTF-8 ({exc.reason}); the rest of the file was not read")
            return
        if not line:
            return
        if not line.strip():
            continue
        if _not_utf8(line):
            yield Rejected(source, line_no, "not UTF-8: the line holds bytes that are not valid UTF-8")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejected(source, line_no, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        try:
            yield parse_article(record)
        except ValueError as exc:
            yield Rejected(source, line_no, str(exc))


def _not_utf8(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _read_csv(handle, source: str) -> Iterator[Article | Rejected]:
    reader = csv.DictReader(handle)
    try:
        header = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as exc:
        yield Rejected(source, 1, f"unreadable CSV header: {exc}")
        return
    lacking = [name for name in ("id", "title", "body") if name not in header]
    if lacking:
        yield Rejected(source, 1, "CSV header lacks column " + ", ".join(repr(c) for c in lacking))
        return
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            yield Rejected(source, start, f"unreadable CSV row: {exc}")
            return
        if None in row:
            yield Rejected(source, start, f"row has more fields than the header ({len(header)})")
            continue
        if any(isinstance(v, str) and _not_utf8(v) for v in row.values()):
            yield Rejected(source, start, "not UTF-8: the row holds bytes that are not valid UTF-8")
            continue
        record = {k: v for k, v in row.items() if v is not None and v != ""}
        record.setdefault("title", "")
        try:
            yield parse_article(record)
        except ValueError as exc:
            yield Rejected(source, start, str(exc))
