"""``make bench``: run every ``benchmarks/bench_*.py`` at its quick default size and print one table.

Each script prints its own detailed report and ``ROW {json}`` lines (see ``benchmarks/table.py``); this runner
keeps the reports in ``--log`` and prints one line per row: the figure, its limit measured in the same run, the
ratio (times slower than the limit) and the target. Exit status 1 if a script fails; a missed target is shown
as ``MISSED``, not an error, since CPU timings on a shared machine are noisy.

    HF_HUB_OFFLINE=1 python benchmarks/run_all.py [--only bench_retrieval bench_unic_step] [--log bench.log]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from table import ROW_PREFIX

HERE = Path(__file__).resolve().parent


def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3g} s"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:,.1f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="script names (without .py) to run")
    parser.add_argument("--log", default="outputs/bench.log", help="where the scripts' full reports go")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [script for script in scripts if script.stem in args.only]
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(args.log, "w") as log:
        for script in scripts:
            print(f"running {script.name} ...", file=sys.stderr, flush=True)
            log.write(f"== {script.name}\n")
            log.flush()
            completed = subprocess.run(
                [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=log, text=True
            )
            log.write(completed.stdout)
            for line in completed.stdout.splitlines():
                if line.startswith(ROW_PREFIX):
                    rows.append((script.stem, json.loads(line[len(ROW_PREFIX) :])))
            if completed.returncode != 0:
                failed.append(script.name)
    minutes = (time.perf_counter() - start) / 60
    header = f"{'figure':<58} {'value':>16} {'limit (same run)':<46} {'ratio':>6} {'target':>7}  verdict"
    print(header)
    print("-" * len(header))
    for _, row in rows:
        limit = f"{row['limit_name']}: {_format(row['limit'], row['unit'])}"
        target = row["target"]
        if target is None:
            verdict, target_text = "report", "-"
        else:
            verdict = "ok" if row["ratio"] <= target else "MISSED"
            target_text = f"<={target:g}"
        print(
            f"{row['figure']:<58} {_format(row['value'], row['unit']):>16} {limit:<46} "
            f"{row['ratio']:>6.2f} {target_text:>7}  {verdict}"
        )
        if row.get("note"):
            print(f"{'':<4}{row['note']}")
    print(
        f"{len(rows)} rows from {len(scripts)} scripts in {minutes:.1f} min; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; full reports in {args.log}"
    )
    if failed:
        print(f"failed: {', '.join(failed)} (see {args.log})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
