"""Prometheus text-format metrics, kept per server process."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route)
        with self._lock:
            self.requests[(method, route, status)] += 1
            buckets = self.latency_buckets[key]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[key] += seconds
            self.latency_count[key] += 1

    def render(self, *, index_articles: int | None, index_built_at: float | None, reindex_runs: int) -> str:
        lines = [
            "# HELP recommender_requests_total HTTP requests by route and status.",
            "# TYPE recommender_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'recommender_requests_total{{method="{method}",route="{_label(route)}",status="{status}"}} {n}')
            lines += [
                "# HELP recommender_request_seconds HTTP request latency by route.",
                "# TYPE recommender_request_seconds histogram",
            ]
            for (method, route), buckets in sorted(self.latency_buckets.items()):
                labels = f'method="{method}",route="{_label(route)}"'
                for bound, n in zip(BUCKETS, buckets):
                    lines.append(f'recommender_request_seconds_bucket{{{labels},le="{bound}"}} {n}')
                count = self.latency_count[(method, route)]
                lines.append(f'recommender_request_seconds_bucket{{{labels},le="+Inf"}} {count}')
                lines.append(f"recommender_request_seconds_sum{{{labels}}} {self.latency_sum[(method, route)]:.6f}")
                lines.append(f"recommender_request_seconds_count{{{labels}}} {count}")
        lines += [
            "# HELP recommender_index_articles Articles in the index this process serves.",
            "# TYPE recommender_index_articles gauge",
            f"recommender_index_articles {index_articles if index_articles is not None else 0}",
            "# HELP recommender_index_age_seconds Seconds since the served index was built.",
            "# TYPE recommender_index_age_seconds gauge",
            f"recommender_index_age_seconds {time.time() - index_built_at:.1f}" if index_built_at else "recommender_index_age_seconds NaN",
            "# HELP recommender_reindex_runs_total Background reindex jobs run by this process.",
            "# TYPE recommender_reindex_runs_total counter",
            f"recommender_reindex_runs_total {reindex_runs}",
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
