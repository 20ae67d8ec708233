"""A feature cache built by two gloo processes (``accelerate launch``) equals the single-process build: same rows,
same values, same metadata and fingerprint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_distill.data import ImageTransform
from hf_distill.teachers.cache import SPEC_FILE, build_feature_cache, load_feature_cache
from hf_distill.teachers.sharded_cache import process_slice

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))

import cache_build  # noqa: E402


def test_process_slices_cover_the_rows_once():
    for rows, processes in [(162, 2), (7, 3), (5, 5)]:
        slices = [process_slice(rows, processes, rank) for rank in range(processes)]
        assert slices[0][0] == 0 and slices[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
        assert max(e - s for s, e in slices) - min(e - s for s, e in slices) <= 1


@pytest.mark.slow
def test_two_process_cache_equals_the_single_process_cache(tiny_benchmark, tiny_benchmark_dir, tmp_path):
    dataset = tiny_benchmark.domains["digits"]["train"]
    single = build_feature_cache(
        dataset,
        cache_build.extract,
        ImageTransform(16, train=True),
        cache_build.SPEC,
        tmp_path / "one",
        16,
        seed=3,
    )
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--main_process_port",
        "0",  # a free port: pytest-xdist may run two launches at once
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "tests" / "scripts" / "cache_build.py"),
        "--benchmark",
        str(tiny_benchmark_dir),
        "--cache_dir",
        str(tmp_path / "two"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    merged = load_feature_cache(tmp_path / "two", cache_build.SPEC)
    assert len(merged) == len(single) == 2 * len(dataset)
    for column in ("source_index", "view", "pooled", "mean"):
        assert torch.equal(merged[:][column], single[:][column]), column
    # augmented views: the two views of an image differ, so a wrong seed offset would show
    assert not torch.equal(single[0]["pooled"], single[1]["pooled"])
    one, two = (json.loads((tmp_path / name / SPEC_FILE).read_text()) for name in ("one", "two"))
    assert one == two
    # nothing left beside the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
