"""Filters on related and search lists: section, tag, date range, language."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from recommender.articles import parse_date
from recommender.errors import InvalidInput

HAS_TAG_SQL = "EXISTS (SELECT 1 FROM json_each(articles.tags) WHERE json_each.value = ?)"
"""An article's tags are a JSON array; this matches one tag."""


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

    def sql(self) -> tuple[str, list[str]]:
        """A WHERE clause over the ``articles`` table and its parameters."""
        clauses, params = [], []
        if self.section:
            clauses.append("section = ?")
            params.append(self.section)
        if self.lang:
            clauses.append("lang = ?")
            params.append(self.lang)
        if self.same_language:
            clauses.append("(lang = ? OR lang IS NULL)")
            params.append(self.same_language)
        if self.tag:
            clauses.append(HAS_TAG_SQL)
            params.append(self.tag)
        if self.since:
            clauses.append("published >= ?")
            params.append(self.since)
        if self.until:
            # '2024-05-31' < '2024-05-31T10:00' < '2024-05-31~' in byte order.
            clauses.append("published <= ?")
            params.append(self.until + "~" if len(self.until) == 10 else self.until)
        return " AND ".join(clauses) or "1", params

NO_FILTERS = Filters()
