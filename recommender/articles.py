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
from urllib.parse import urlsplit

KNOWN_FIELDS = ("id", "title", "body", "url", "published", "section", "tags", "lang")
MAX_ID_LENGTH = 512
MAX_BODY_CHARS = 2_000_000
MAX_DRAFT_CHARS = 100_000
"""A draft sent to the public ``POST /v1/related`` (and an article ranked
before it is indexed) is read up to this length."""
MAX_TITLE_CHARS = 2_000
MAX_URL_CHARS = 2_000
MAX_SECTION_CHARS = 200
MAX_LANG_CHARS = 20
MAX_DATE_CHARS = 40
MAX_TAGS = 100
MAX_TAG_CHARS = 200
MAX_METADATA_BYTES = 65_536
"""Extra fields, kept as metadata, as JSON (UTF-8)."""
MAX_METADATA_DEPTH = 16


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
    """Validate one input record; raise ``ValueError`` saying what is wrong.
    The one validation of every write path: ``ingest``, ``PUT`` and the batch
    ``POST`` (each field's limit is a constant above)."""
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
    _check_length("title", title, MAX_TITLE_CHARS)
    if len(body) > MAX_BODY_CHARS:
        raise ValueError(f"'body' is longer than {MAX_BODY_CHARS} characters")
    title, body = _clean(title), _clean(body)
    for name, text in (("id", article_id), ("title", title), ("body", body)):
        _check_unicode(name, text)
    if not body.strip():
        raise ValueError("'body' is empty")

    section = record.get("section")
    if section is None:
        section = record.get("category")
    metadata = {
        k: v for k, v in record.items() if k not in KNOWN_FIELDS and not (k == "category" and section == v)
    }
    _check_metadata(metadata)
    return Article(
        id=article_id,
        title=title.strip(),
        body=body.strip(),
        url=parse_url(record.get("url")),
        published=parse_date(record.get("published")),
        section=_optional_str({"section": section}, "section", MAX_SECTION_CHARS),
        tags=_parse_tags(record.get("tags")),
        lang=(_optional_str(record, "lang", MAX_LANG_CHARS) or detect_language(title + ". " + body) or None),
        metadata=metadata,
    )


def _check_length(name: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise ValueError(f"{name!r} is longer than {limit} characters")


def _check_unicode(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name!r} is not valid Unicode text (it holds a lone surrogate such as \\ud800)") from None


def _check_metadata(metadata: dict[str, Any]) -> None:
    """Extra fields: at most MAX_METADATA_DEPTH levels of nesting (checked
    without recursion, so no depth can overflow the stack) and at most
    MAX_METADATA_BYTES of JSON."""
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"extra fields (metadata) are nested more than {MAX_METADATA_DEPTH} levels deep")
            if isinstance(value, dict):
                for key in value:
                    _check_unicode("metadata", str(key))
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(value, str):
            _check_unicode("metadata", value)
    try:
        size = len(json.dumps(metadata, ensure_ascii=False, default=str).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra fields (metadata) are not JSON: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"extra fields (metadata) take {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")


def parse_url(value: Any) -> str | None:
    """An absolute http(s) URL, or None; raise ``ValueError`` for anything else
    (``javascript:``, ``data:``, relative paths, spaces, control characters)."""
    text = _optional_str({"url": value}, "url", MAX_URL_CHARS)
    if text is None:
        return None
    if _NOT_IN_URL.search(text):
        raise ValueError("'url' holds spaces or control characters; percent-encode them")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ValueError(f"'url' does not parse: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"'url' must be an absolute http or https URL such as https://news.example/story, got {text[:80]!r}")
    return text


def http_url(url: str | None) -> str | None:
    """The URL if it is an absolute http(s) one, else None: what a page may
    link to. Ingest accepts no other URL; this also covers stores written by
    releases that accepted any."""
    try:
        return parse_url(url)
    except ValueError:
        return None


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
_NOT_IN_URL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
"""Spaces (Unicode ones too) and C0/C1 control characters: percent-encoded in a real URL."""


def _clean(text: str) -> str:
    """Control characters (other than tab and line breaks) become spaces."""
    return _CONTROL.sub(" ", text)


def _optional_str(record: dict[str, Any], name: str, limit: int) -> str | None:
    value = record.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string")
    _check_length(name, value, limit)
    _check_unicode(name, value)
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
    if len(value) > MAX_TAGS:
        raise ValueError(f"'tags' holds {len(value)} tags; the limit is {MAX_TAGS}")
    for tag in value:
        if len(tag) > MAX_TAG_CHARS:
            raise ValueError(f"a tag is longer than {MAX_TAG_CHARS} characters")
        _check_unicode("tags", tag)
    return tuple(dict.fromkeys(t.strip() for t in value if t.strip()))


def parse_date(value: Any) -> str | None:
    """Normalize a date or date-time to ISO 8601; raise ``ValueError`` if it is not one."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("'published' must be an ISO date string such as 2024-05-31")
    _check_length("published", value, MAX_DATE_CHARS)
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
        except RecursionError:
            yield Rejected(source, line_no, "invalid JSON: nested too deeply")
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
