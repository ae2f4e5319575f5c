"""Ingest: read JSONL/CSV files and upsert their articles into the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from recommender.articles import Article, Rejected, read_articles
from recommender.config import Settings
from recommender.store import Store, open_store

BATCH = 1000


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [{"source": r.source, "line": r.line, "reason": r.reason} for r in self.rejected],
            "failed_files": self.failed_files,
        }


def ingest_files(settings: Settings, files: Iterable[Path]) -> IngestReport:
    report = IngestReport()
    with open_store(settings) as store:
        for path in files:
            try:
                ingest_records(store, read_articles(Path(path)), report)
            except (OSError, ValueError) as exc:
                report.failed_files.append(f"{path}: {exc}")
    return report


def ingest_records(store: Store, records: Iterable[Article | Rejected], report: IngestReport) -> IngestReport:
    """Upsert in batches; a rejected record is noted and never stops the batch."""
    batch: list[Article] = []
    for record in records:
        if isinstance(record, Rejected):
            report.rejected.append(record)
            continue
        batch.append(record)
        if len(batch) >= BATCH:
            _flush(store, batch, report)
    _flush(store, batch, report)
    return report


def _flush(store: Store, batch: list[Article], report: IngestReport) -> None:
    if not batch:
        return
    counts = store.upsert(batch)
    report.added += counts.added
    report.updated += counts.updated
    report.unchanged += counts.unchanged
    batch.clear()
