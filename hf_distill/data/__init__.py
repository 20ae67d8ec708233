"""Domains through ``datasets``: UnED on disk, image folders, Hub ids, the offline benchmark, transforms.

Names are imported on first use, so that ``python -m hf_distill.data.benchmark`` runs the module once
(an eager import here would load it before runpy executes it) and ``import hf_distill`` stays light.
"""

import importlib

_EXPORTS = {
    "DOMAIN_NAMES": "hf_distill.data.benchmark",
    "build_offline_benchmark": "hf_distill.data.benchmark",
    "default_benchmark_path": "hf_distill.data.benchmark",
    "load_benchmark": "hf_distill.data.benchmark",
    "DecodeReport": "hf_distill.data.decoding",
    "ImageDecodeError": "hf_distill.data.decoding",
    "to_rgb": "hf_distill.data.decoding",
    "Benchmark": "hf_distill.data.domains",
    "load_hub_domain": "hf_distill.data.domains",
    "load_imagefolder_domains": "hf_distill.data.domains",
    "load_uned_domains": "hf_distill.data.domains",
    "load_domains": "hf_distill.data.loading",
    "subset_benchmark": "hf_distill.data.loading",
    "subset_indices": "hf_distill.data.loading",
    "subset_split": "hf_distill.data.loading",
    "StreamingDomainBatches": "hf_distill.data.streaming",
    "StreamingDomains": "hf_distill.data.streaming",
    "load_streaming_domains": "hf_distill.data.streaming",
    "write_parquet_shards": "hf_distill.data.streaming",
    "ImageTransform": "hf_distill.data.transforms",
    "with_pixel_values": "hf_distill.data.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_distill.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
