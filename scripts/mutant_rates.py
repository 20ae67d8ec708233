"""Kill rate per mutated module of the last ``make mutants`` run (mutmut's results under ``mutants/``).

Prints one Markdown table row per module (the table of docs/testing.md) and lists the surviving mutants, which
``mutmut show <name>`` displays. Killed counts kills and timeouts (a mutant that makes the tests hang is caught);
the rate is over the mutants that were checked, and the mutants not checked in this run are counted apart.

Usage: ``.venv/bin/python scripts/mutant_rates.py [mutants]``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

CAUGHT = {"killed", "timeout", "caught by type check", "segfault"}


def module_of(mutant: str) -> str:
    """``hf_distill.layers.normalization.x_f__mutmut_3`` -> ``hf_distill/layers/normalization.py``."""
    return mutant.split(".x", 1)[0].replace(".", "/") + ".py"


def main(root: str = "mutants") -> None:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for meta in sorted(Path(root).rglob("*.py.meta")):
        for mutant, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = status_by_exit_code[exit_code]
            module = module_of(mutant)
            counts[module][status] += 1
            if status == "survived":
                survivors[module].append(mutant)
    print("| module | mutants | checked | killed | survived | no tests | kill rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module, count in sorted(counts.items()):
        checked = sum(n for status, n in count.items() if status != "not checked")
        killed = sum(count[status] for status in CAUGHT)
        if not checked:
            continue
        rate = f"{100 * killed / checked:.0f} %"
        print(
            f"| `{module}` | {sum(count.values())} | {checked} | {killed} | {count['survived']} | "
            f"{count['no tests']} | {rate} |"
        )
    for module, names in sorted(survivors.items()):
        print(f"\nsurvivors in {module}:")
        for name in names:
            print(f"  {name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
