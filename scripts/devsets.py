"""The development sets (../shared/data, described in its README.md): the one
list the scripts read, each set's file, the task it is judged on and, for
search, its queries file.

    from devsets import DATA, EVALUATED, named

``EVALUATED`` is what ``recommender eval`` is run on (scripts/eval_all.py,
the quality rows of scripts/bench_reindex.py), in the order of the tables
docs/evaluation.md quotes. A script that uses another subset, or needs its
sets in an order of its own, picks them by name (``named``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DATA = Path("../shared/data")
"""Where the sets are, seen from the repository's root (the ``--data`` default of the scripts that import this)."""


@dataclass(frozen=True)
class DevSet:
    name: str
    """The file's name without ``.jsonl``."""
    task: str | None
    """The task it is judged on: "related" (labels: the ``group`` field), "search"
    (``queries``' judgments), or None: records only, judged on nothing (a large dated archive)."""
    queries: str | None = None
    """The search task's queries file (``relevant_ids``)."""
    articles: bool = True
    """Whole articles; False for headlines with a sentence or three (AG News):
    they calibrate the ranker's confidence but are not evaluated as article lists."""
    topical: bool = False
    """Labelled by topic or story rather than event or incident: a list of 10 should stay full."""

    @property
    def file(self) -> str:
        return f"{self.name}.jsonl"

    def path(self, data: Path) -> Path:
        return data / self.file

    def queries_path(self, data: Path) -> Path | None:
        return data / self.queries if self.queries else None


SETS: tuple[DevSet, ...] = (
    DevSet("bbc_news", "related", topical=True),
    DevSet("newswcl50", "related"),
    DevSet("wikiref220", "related", topical=True),
    DevSet("gva_dev", "related"),
    DevSet("agnews_test", "related", articles=False, topical=True),
    DevSet("time_docs", "search", "time_queries.jsonl"),
    DevSet("gva_dev", "search", "gva_dev_queries.jsonl"),
    DevSet("reuters21578", None),
)
"""Every development set, once per task it is judged on (gva_dev twice)."""

EVALUATED = tuple(s for s in SETS if s.task is not None and s.articles)
"""The sets ``recommender eval`` runs on: the related sets of whole articles, then the search sets."""


def named(names: Iterable[str], task: str | None = None) -> list[DevSet]:
    """The sets of these names, in the order given (the task's entry for a set
    judged on two). An unknown name is a KeyError."""
    out = []
    for name in names:
        found = [s for s in SETS if s.name == name and (task is None or s.task == task)]
        if not found:
            raise KeyError(f"no development set {name!r}" + (f" for the {task} task" if task else ""))
        out.append(found[0])
    return out


def get(name: str, task: str | None = None) -> DevSet:
    """One set by name (``named``)."""
    return named([name], task)[0]
