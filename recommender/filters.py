"""Filters on related and search lists: section, tag, date range, language."""

from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recommender.articles import Article, parse_date
from recommender.errors import InvalidInput
from recommender.integrity import check_array, check_compressed, check_range


@dataclass(frozen=True)
class Filters:
    section: str | None = None
    since: str | None = None
    """Inclusive ISO date (or date-time) lower bound on ``published``."""
    until: str | None = None
    """Inclusive upper bound; a bare date includes that whole day."""
    lang: str | None = None
    tag: str | None = None
    same_language: str | None = None
    """The source article's language, applied by default to related lists:
    unlike ``lang``, it also lets through articles of unknown language."""

    @classmethod
    def parse(cls, section=None, since=None, until=None, lang=None, tag=None) -> Filters:
        def date(name: str, value: str | None) -> str | None:
            try:
                return parse_date(value)
            except ValueError:
                raise InvalidInput(f"{name!r} must be an ISO date such as 2024-05-31, got {value!r}", field=name) from None

        filters = cls(section or None, date("since", since), date("until", until), lang or None, tag or None)
        if filters.since and filters.until and filters.since[:10] > filters.until[:10]:
            raise InvalidInput("'since' is after 'until'", field="since")
        return filters

    def __bool__(self) -> bool:
        return any((self.section, self.since, self.until, self.lang, self.tag, self.same_language))

    def with_defaults(self, **values: str | None) -> Filters:
        return dataclasses.replace(self, **values)


NO_FILTERS = Filters()


@dataclass(frozen=True)
class FilterColumns:
    """What the request filters read, held per index version in memory: one
    row per article, in the version's row order. A filter is a few numpy
    comparisons over these, never an SQL scan of the store (at 100k articles
    that scan cost about 100 ms per related list, 1 s at 1M).

    Values are codes into small tables (``langs``, ``sections``, ``tags``;
    -1 for none); ``published`` holds the ISO strings as bytes, so ``since``
    and ``until`` compare exactly as SQLite compares the text column."""

    langs: tuple[str, ...]
    sections: tuple[str, ...]
    tags: tuple[str, ...]
    lang: np.ndarray
    section: np.ndarray
    published: np.ndarray
    tag_rows: sp.csc_matrix
    """(rows, tags): 1 where the row has the tag."""

    def __len__(self) -> int:
        return len(self.lang)

    @classmethod
    def build(cls, articles: Sequence[Article]) -> FilterColumns:
        langs = sorted({a.lang for a in articles if a.lang})
        sections = sorted({a.section for a in articles if a.section})
        tags = sorted({t for a in articles for t in a.tags})
        lang_code = {v: i for i, v in enumerate(langs)}
        section_code = {v: i for i, v in enumerate(sections)}
        tag_code = {v: i for i, v in enumerate(tags)}
        rows = [r for r, a in enumerate(articles) for _ in dict.fromkeys(a.tags)]
        cols = [tag_code[t] for a in articles for t in dict.fromkeys(a.tags)]
        return cls(
            tuple(langs), tuple(sections), tuple(tags),
            lang=np.array([lang_code[a.lang] if a.lang else -1 for a in articles], dtype=np.int32),
            section=np.array([section_code[a.section] if a.section else -1 for a in articles], dtype=np.int32),
            published=np.array([(a.published or "").encode() for a in articles], dtype="S40"),
            tag_rows=sp.csc_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(articles), len(tags))),
        )

    def mask(self, filters: Filters) -> np.ndarray:
        """Rows that ``filters`` allow, as the store's query would select them
        (``recommender.store.sqlite.filter_sql``; ``tests/test_segments.py`` holds the two to the same rows)."""
        keep = np.ones(len(self), dtype=bool)
        if filters.section:
            keep &= self.section == _code(self.sections, filters.section)
        if filters.lang:
            keep &= self.lang == _code(self.langs, filters.lang)
        if filters.same_language:
            keep &= (self.lang == _code(self.langs, filters.same_language)) | (self.lang == -1)
        if filters.tag:
            code = _code(self.tags, filters.tag)
            has = np.zeros(len(self), dtype=bool)
            if code >= 0:
                column = self.tag_rows[:, code]
                has[column.indices[column.data != 0]] = True
            keep &= has
        if filters.since or filters.until:
            dated = self.published != b""
            if filters.since:
                keep &= dated & (self.published >= filters.since.encode())
            if filters.until:
                until = filters.until + "~" if len(filters.until) == 10 else filters.until
                keep &= dated & (self.published <= until.encode())
        return keep

    def weights(self, sections: dict[str, float], tags: dict[str, float]) -> np.ndarray:
        """Per row, the summed weights of its section and tags among those
        named (editorial boosts): one pass over the rows and the named tags'
        columns, whatever the number of names."""
        by_section = np.zeros(len(self.sections) + 1)  # the last slot: no section (code -1)
        for name, weight in sections.items():
            code = _code(self.sections, name)
            if code >= 0:
                by_section[code] += weight
        total = by_section[self.section]
        codes, values = [], []
        for name, weight in tags.items():
            code = _code(self.tags, name)
            if code >= 0:
                codes.append(code)
                values.append(weight)
        if codes:
            total += self.tag_rows[:, codes].astype(np.float64) @ np.asarray(values)
        return total

    def take(self, rows: np.ndarray) -> FilterColumns:
        """These rows only, in the given order (the tables stay)."""
        return FilterColumns(self.langs, self.sections, self.tags, self.lang[rows], self.section[rows],
                             self.published[rows], self.tag_rows[rows].tocsc())

    @classmethod
    def concat(cls, parts: Sequence[FilterColumns]) -> FilterColumns:
        """The parts' rows one after the other, over the union of their tables."""
        langs = tuple(sorted({v for p in parts for v in p.langs}))
        sections = tuple(sorted({v for p in parts for v in p.sections}))
        tags = tuple(sorted({v for p in parts for v in p.tags}))

        def recode(codes: np.ndarray, old: tuple[str, ...], new: tuple[str, ...]) -> np.ndarray:
            where = {v: i for i, v in enumerate(new)}
            return np.array([where[v] for v in old] + [-1], dtype=np.int32)[codes]  # -1 (none) stays -1

        tag_blocks = []
        for p in parts:
            coo = p.tag_rows.tocoo()
            cols = recode(coo.col, p.tags, tags)
            tag_blocks.append(sp.csr_matrix((coo.data, (coo.row, cols)), shape=(len(p), len(tags))))
        return cls(
            langs, sections, tags,
            lang=np.concatenate([recode(p.lang, p.langs, langs) for p in parts]),
            section=np.concatenate([recode(p.section, p.sections, sections) for p in parts]),
            published=np.concatenate([p.published.astype("S40") for p in parts]),
            tag_rows=sp.vstack(tag_blocks, format="csc"),
        )

    def save(self, path: Path) -> None:
        np.savez(
            path, lang=self.lang, section=self.section, published=self.published,
            tag_indptr=self.tag_rows.indptr, tag_indices=self.tag_rows.indices,
            tables=np.array([json.dumps([self.langs, self.sections, self.tags], ensure_ascii=False)]),
        )

    @classmethod
    def load(cls, path: Path) -> FilterColumns:
        with np.load(path, allow_pickle=False) as data:
            langs, sections, tags = json.loads(str(data["tables"][0]))
            lang, section, published = data["lang"], data["section"], data["published"]
            n = len(lang)
            indices, indptr = data["tag_indices"], data["tag_indptr"]
        # Checked before scipy reads them: a damaged file is refused, never read out of bounds.
        what = f"{path.parent.name}/{path.name}"
        check_array(lang, what, "lang", kind="i", rows=n)
        check_array(section, what, "section", kind="i", rows=n)
        check_array(published, what, "published", kind="S", rows=n)
        check_range(lang, what, "lang", -1, len(langs))
        check_range(section, what, "section", -1, len(sections))
        check_compressed(indptr, indices, np.ones(len(indices), np.int8), len(tags), n, what, "tags")
        tag_rows = sp.csc_matrix((np.ones(len(indices), np.int8), indices, indptr), shape=(n, len(tags)))
        return cls(tuple(langs), tuple(sections), tuple(tags), lang=lang, section=section,
                   published=published, tag_rows=tag_rows)


def _code(table: tuple[str, ...], value: str) -> int:
    """The value's code, or -2 (matches no row) when no row has it."""
    at = bisect.bisect_left(table, value)
    return at if at < len(table) and table[at] == value else -2
