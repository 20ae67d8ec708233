"""Time and memory of ``load_uned_domains`` on a generated UnED-sized set of info files (2.8M entries).

    HF_HUB_OFFLINE=1 python benchmarks/bench_uned_loading.py [--entries 2800000] [--keep DIR]

Writes ``info_files/<domain>/<split>.json`` for UnED's eight domains and their evaluation splits (entries
``{"path": ..., "class_id": ...}``; the ``gldv2`` and ``met`` test queries multi-label, as in UnED), then loads
them with ``load_uned_domains(check_images=False)`` — the images themselves are not generated, decoding them is
an I/O-bound pass of its own. The limit printed next to it is ``json.load`` of the same files, in the same
process: the parsing any loader has to do. Memory: peak RSS of the process (``ru_maxrss``) above the RSS
before loading.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from table import emit_row, load_average, peak_rss_mib, rss_mib

from hf_distill.data.domains import UNED_DOMAINS, UNED_EVAL_PAIRS, load_uned_domains

# Rough shares of UnED's 2.8M images per domain (large: inat, gldv2, food2k; small: cars, inshop).
SHARES = {
    "cars": 0.006,
    "sop": 0.043,
    "inshop": 0.019,
    "inat": 0.36,
    "met": 0.14,
    "gldv2": 0.24,
    "food2k": 0.15,
    "rp2k": 0.042,
}
SPLIT_SHARES = {"train": 0.8, "val": 0.05, "test": 0.1, "index": 0.05, "small_index": 0.02}
MULTI_LABEL = {("gldv2", "test"), ("met", "test")}


def domain_splits(domain: str) -> list[str]:
    pairs = [UNED_EVAL_PAIRS[name].get(domain, (name, name)) for name in ("val", "test")]
    return list(dict.fromkeys(["train", *(split for pair in pairs for split in pair)]))


def write_info_files(root: Path, entries: int, seed: int = 0) -> int:
    """Info files with about ``entries`` entries in total; returns the exact count."""
    rng = np.random.default_rng(seed)
    written = 0
    for domain in UNED_DOMAINS:
        splits = domain_splits(domain)
        weights = np.array([SPLIT_SHARES[split] for split in splits])
        sizes = np.round(entries * SHARES[domain] * weights / weights.sum()).astype(int)
        classes = max(10, int(sizes[0] // 20))
        (root / domain).mkdir(parents=True, exist_ok=True)
        for split, size in zip(splits, sizes):
            labels = rng.integers(0, classes, size)
            if (domain, split) in MULTI_LABEL:
                class_ids = [[int(label), int((label + 1) % classes)] for label in labels]
            else:
                class_ids = labels.tolist()
            info = [
                {"path": f"{domain}/{split}/{label:06d}/{number:08d}.jpg", "class_id": class_id}
                for number, (label, class_id) in enumerate(zip(labels.tolist(), class_ids))
            ]
            (root / domain / f"{split}.json").write_text(json.dumps(info))
            written += int(size)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=2_800_000)
    parser.add_argument("--keep", type=Path, help="write the info files here and keep them")
    args = parser.parse_args()
    print(f"load average before: {load_average():.1f}")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "info_files"
        start = time.perf_counter()
        count = write_info_files(root, args.entries)
        size_mb = sum(path.stat().st_size for path in root.rglob("*.json")) / 2**20
        print(f"wrote {count:,} entries ({size_mb:,.0f} MiB of JSON) in {time.perf_counter() - start:.1f} s")
        gc.collect()
        start = time.perf_counter()
        for path in sorted(root.rglob("*.json")):
            json.loads(path.read_text())
        parse_s = time.perf_counter() - start
        gc.collect()
        before = rss_mib()
        start = time.perf_counter()
        benchmark = load_uned_domains(root, Path(scratch) / "images", check_images=False)
        load_s = time.perf_counter() - start
        peak_above = peak_rss_mib() - before
        loaded = sum(len(split) for splits in benchmark.domains.values() for split in splits.values())
    assert loaded == count, (loaded, count)
    print(
        f"load_uned_domains: {loaded:,} entries of {len(benchmark.domains)} domains in {load_s:.1f} s "
        f"({loaded / load_s:,.0f} entries/s), peak RSS {peak_above:,.0f} MiB above the RSS before loading; "
        f"json.load of the same files: {parse_s:.1f} s"
    )
    emit_row(
        f"load_uned_domains, {loaded / 1e6:.1f}M info-file entries",
        load_s,
        "json.load of the same files",
        parse_s,
        "s",
        None,
        note=f"peak RSS +{peak_above:,.0f} MiB while loading; check_images=False; load {load_average():.1f}",
    )


if __name__ == "__main__":
    main()
