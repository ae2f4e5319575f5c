"""Ranking of related lists in one place: the signals (``signals``), the
combiner and its calibration (``model``)."""

from recommender.rank.model import DEFAULT_MODEL, Ranker
from recommender.rank.signals import SIGNALS, Query, features, query_for_row

__all__ = ["DEFAULT_MODEL", "SIGNALS", "Query", "Ranker", "features", "query_for_row"]
