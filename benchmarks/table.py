"""Rows of the ``make bench`` table: each benchmark prints its figures next to the limit measured in the same run.

A benchmark script calls `emit_row` for every figure; the line it prints starts with ``ROW `` and carries one
JSON object, which ``benchmarks/run_all.py`` collects into one table. ``ratio`` is always "how many times slower
than the limit" (a time ratio, or a throughput ratio limit / figure), so 1.0 is the limit itself and the target
reads ``<= 1.1``; rows without a target (``target=None``) are reported, not judged.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROW_PREFIX = "ROW "


def emit_row(
    figure: str,
    value: float,
    limit_name: str,
    limit: float,
    unit: str,
    target: float | None,
    higher_is_better: bool = False,
    note: str = "",
) -> dict:
    """Print one table row (``ROW {json}``) and return it.

    Args:
        figure: what was measured.
        value: the figure (seconds, images/s ...).
        limit_name: what the limit is.
        limit: the limit's figure, measured in the same process.
        unit: unit of ``value`` and ``limit``.
        target: the largest acceptable ``ratio`` (``None``: report only).
        higher_is_better: ``value`` is a throughput (ratio = limit / value) rather than a time (value / limit).
        note: extra context (peak memory, sizes).
    """
    ratio = limit / value if higher_is_better else value / limit
    row = {
        "figure": figure,
        "value": value,
        "limit_name": limit_name,
        "limit": limit,
        "unit": unit,
        "ratio": ratio,
        "target": target,
        "note": note,
    }
    print(ROW_PREFIX + json.dumps(row), flush=True)
    return row


def load_average() -> float:
    """One-minute load average of the machine (CPU figures are only comparable at a similar load)."""
    return os.getloadavg()[0]


def peak_rss_mib() -> float:
    """Peak resident memory of this process (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall-clock seconds of each function, run in turns (A B A B ...) so that a change of machine load
    hits every function alike. Each function is called once before timing (warm-up)."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
