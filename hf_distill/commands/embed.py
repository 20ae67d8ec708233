"""``hf-distill embed``: universal embeddings of every image under a folder, written to a safetensors file.

The model is a folder or Hub id saved by hf_distill (``save_embedder``); images are preprocessed with its
saved image processor. Images are found recursively by extension and decoded fully first, so a corrupt,
truncated or empty file is reported by name: ``--on-bad-image error`` (default) stops there, ``skip``
leaves it out and counts it. Decoding and preprocessing run in ``--num-workers`` DataLoader worker processes
(default: one per spare CPU core, at most 8) while the model embeds the previous batch.

Output: tensor ``embeddings`` ``(n_images, dim)`` float32; metadata ``paths`` (JSON list, relative to the
folder, row order), ``model``, ``num_skipped`` and ``skipped`` (JSON list of ``[path, reason]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``embed`` sub-command."""
    parser = subparsers.add_parser(
        "embed",
        help="embed a folder of images with a saved universal embedder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="embedder folder (or Hub id) saved by hf_distill")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    parser.add_argument(
        "--truncate-dim",
        type=int,
        default=None,
        help="keep the first N values of each embedding, renormalised (one of the model's matryoshka_dims)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=default_num_workers(),
        help="DataLoader processes decoding and preprocessing images (0: in the main process)",
    )
    parser.add_argument(
        "--on-bad-image",
        choices=["error", "skip"],
        default="error",
        help="an undecodable image stops the run (error) or is skipped and counted (skip)",
    )
    parser.set_defaults(func=run)


def default_num_workers() -> int:
    """One decoding worker per CPU core left after the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class _PreprocessedFiles:
    """Image files decoded fully and preprocessed: item ``i`` is ``(i, pixels)``, or ``(i, reason)`` for a file
    that does not decode.

    A map-style dataset for ``torch.utils.data.DataLoader``; the failure is returned rather than raised so that
    the main process decides (stop or skip) whichever worker met it.
    """

    def __init__(self, paths: list[Path], processor: Any) -> None:
        self.paths = paths
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        from hf_distill.data.decoding import ImageDecodeError, check_image_file

        try:
            image = check_image_file(self.paths[index])
        except ImageDecodeError as error:
            return index, error.reason
        return index, self.processor(image, return_tensors="pt").pixel_values[0]


def _keep_as_list(items: list) -> list:
    return items


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, sorted)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    # A symlink that loops or dangles is not a file: keep it so decoding reports it (error or counted skip).
    paths = sorted(
        p
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not paths:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return paths


def embed_folder(
    model_path: str,
    folder: Path,
    output: Path,
    batch_size: int = 64,
    device: str = "cpu",
    on_bad_image: str = "error",
    num_workers: int = 0,
    truncate_dim: int | None = None,
) -> dict:
    """Embed every image under ``folder`` and write ``output``; returns a summary.

    Args:
        model_path: saved embedder folder or Hub id.
        folder: images, searched recursively.
        output: the ``.safetensors`` file to write.
        batch_size: images per forward pass.
        device: torch device.
        on_bad_image: ``"error"`` or ``"skip"``.
        num_workers: DataLoader worker processes decoding and preprocessing images (0: this process).
        truncate_dim: keep this many leading values, renormalised; one of the model's ``matryoshka_dims``.
    """
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import AutoImageProcessor, AutoModel

    import hf_distill  # noqa: F401  (registers the embedder with the Auto classes)
    from hf_distill.data.decoding import DecodeReport, ImageDecodeError

    if output.suffix != ".safetensors":
        raise ValueError(f"--output {output} must end with .safetensors")
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"--on-bad-image must be 'error' or 'skip', got {on_bad_image!r}")
    if num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {num_workers}")
    from hf_distill.models.embedder import UniversalEmbedderModel, check_truncate_dim

    paths = find_images(folder)
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    if not isinstance(model, UniversalEmbedderModel):
        raise ValueError(f"--model {model_path} is a {type(model).__name__}, not a universal embedder")
    check_truncate_dim(truncate_dim, model.config.matryoshka_dims, "--truncate-dim")
    processor = AutoImageProcessor.from_pretrained(model_path)

    report = DecodeReport()
    kept: list[str] = []
    chunks: list[torch.Tensor] = []
    loader = DataLoader(
        _PreprocessedFiles(paths, processor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_keep_as_list,
        pin_memory=torch.device(device).type == "cuda",
    )
    with torch.no_grad(), tqdm(total=len(paths), desc="embedding", unit="img") as progress:
        for items in loader:
            pixels = []
            for index, value in items:
                report.num_checked += 1
                if isinstance(value, str):
                    error = ImageDecodeError(paths[index], value)
                    if on_bad_image == "error":
                        raise error
                    report.add_skipped(error)
                    continue
                pixels.append(value)
                kept.append(paths[index].relative_to(folder).as_posix())
            if pixels:
                pixel_values = torch.stack(pixels).to(device, non_blocking=True)
                # The same forward-and-truncate step as UniversalEmbedderModel.encode; decoding stays here, in
                # workers, so that a bad file is reported (or skipped) by name.
                chunks.append(model.embed_pixel_values(pixel_values, truncate_dim).cpu())
            progress.update(len(items))
    if not kept:
        raise ValueError(f"none of the {len(paths)} image files under {folder} could be decoded")
    if report.num_skipped:
        logger.warning("skipped %d unreadable images, e.g. %s", report.num_skipped, report.skipped[:3])

    embeddings = torch.cat(chunks)
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "paths": json.dumps(kept),
        "model": str(model_path),
        "num_skipped": str(report.num_skipped),
        "skipped": json.dumps(report.skipped),
    }
    save_file({"embeddings": embeddings.contiguous()}, str(output), metadata=metadata)
    return {"num_images": len(kept), "dim": embeddings.shape[1], "num_skipped": report.num_skipped}


def run(args: argparse.Namespace) -> int:
    """Run ``hf-distill embed``."""
    summary = embed_folder(
        args.model,
        args.images,
        args.output,
        args.batch_size,
        args.device,
        on_bad_image=args.on_bad_image,
        num_workers=args.num_workers,
        truncate_dim=args.truncate_dim,
    )
    print(
        f"wrote {summary['num_images']} embeddings of dimension {summary['dim']} to {args.output}"
        f" ({summary['num_skipped']} unreadable images skipped)"
    )
    return 0
