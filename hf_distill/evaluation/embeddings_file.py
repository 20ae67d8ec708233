"""Precomputed embeddings on disk, for scoring descriptors computed elsewhere (UnED's descriptor evaluation).

Layout of a ``.safetensors`` or ``.npz`` file, one group of keys per domain (``/`` separates the parts):

- ``<domain>/query``: ``(n_queries, dim)`` float embeddings (required);
- ``<domain>/index``: ``(n_index, dim)`` float embeddings; **absent when the query set is also the index
  set** (UnED's test/test domains), in which case each query is removed from its own neighbours;
- ``<domain>/query_labels`` and ``<domain>/index_labels``: integer labels, 1-D, or 2-D padded with -1 for
  multi-label items. Optional: when missing they are read from a benchmark, row ``i`` of the file being
  row ``i`` of the benchmark split.

No pickle is involved: npz files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from hf_distill.evaluation.metrics import RetrievalDomain, label_matrix

PARTS = ("query", "index", "query_labels", "index_labels")


def read_embeddings_file(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read a file in the layout above into ``{domain: {part: array}}`` (domains in file order).

    Args:
        path: a ``.safetensors`` or ``.npz`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    if path.suffix == ".safetensors":
        arrays = load_file(str(path))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    else:
        raise ValueError(
            f"{path}: unsupported embeddings file type {path.suffix!r}; use .safetensors or .npz"
        )
    domains: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        domain, _, part = key.rpartition("/")
        if not domain or part not in PARTS:
            raise ValueError(f"{path}: key {key!r} is not '<domain>/<part>' with part one of {PARTS}")
        domains.setdefault(domain, {})[part] = array
    for domain, parts in domains.items():
        if "query" not in parts:
            raise ValueError(f"{path}: domain {domain!r} has no '{domain}/query' embeddings")
        if "index_labels" in parts and "index" not in parts:
            raise ValueError(f"{path}: domain {domain!r} has index labels but no '{domain}/index' embeddings")
        for part in ("query", "index"):
            if part in parts and (parts[part].ndim != 2 or parts[part].dtype.kind != "f"):
                raise ValueError(
                    f"{path}: '{domain}/{part}' must be a 2-D float array, got {parts[part].dtype} "
                    f"{parts[part].shape}"
                )
    if not domains:
        raise ValueError(f"{path}: no embeddings in the file")
    return domains


def save_embeddings_file(path: str | Path, domains: Mapping[str, RetrievalDomain]) -> Path:
    """Write retrieval inputs in the layout above (labels included).

    Args:
        path: destination ending in ``.safetensors`` or ``.npz``.
        domains: domain name -> ``RetrievalDomain``.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for name, domain in domains.items():
        if "/" in name:
            raise ValueError(f"domain name {name!r} contains '/', which the file layout uses as a separator")
        arrays[f"{name}/query"] = _float_array(domain.query_embeddings)
        arrays[f"{name}/query_labels"] = label_matrix(domain.query_labels, f"domain {name!r} query labels")
        if not domain.query_is_index:
            arrays[f"{name}/index"] = _float_array(domain.index_embeddings)
            arrays[f"{name}/index_labels"] = label_matrix(
                domain.index_labels, f"domain {name!r} index labels"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({key: np.ascontiguousarray(value) for key, value in arrays.items()}, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        raise ValueError(
            f"{path}: unsupported embeddings file type {path.suffix!r}; use .safetensors or .npz"
        )
    return path


def _float_array(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    return torch.as_tensor(embeddings).detach().to("cpu", torch.float32).numpy()
