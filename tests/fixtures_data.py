"""Benchmark fixtures shared by the test modules: a scaled-down offline benchmark built once per session.

The fixture is the small five-domain benchmark (``offline_five``), which builds in seconds; the default
``manydomain`` benchmark is exercised at a small scale in ``tests/test_data_benchmark.py``.
"""

from pathlib import Path

import pytest

from hf_distill.data.benchmark import FAST_BENCHMARK, build_offline_benchmark, load_benchmark
from hf_distill.data.domains import Benchmark

# 3 % of the full per-class counts: every domain keeps all its classes (photos: 120 train / 40 test) with
# at least 2 images per class and split, and the whole build takes a few seconds.
TINY_SCALE = 0.03
TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_benchmark_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny ``offline_five`` benchmark (all five domains, 32x32 RGB, seed 0)."""
    return build_offline_benchmark(
        tmp_path_factory.mktemp("benchmark") / "tiny",
        seed=TINY_SEED,
        scale=TINY_SCALE,
        benchmark=FAST_BENCHMARK,
    )


@pytest.fixture(scope="session")
def tiny_benchmark(tiny_benchmark_dir: Path) -> Benchmark:
    """The tiny offline benchmark, loaded."""
    return load_benchmark(tiny_benchmark_dir)
