"""Retrieval pictures: queries and their top-k neighbours from the merged index, framed by correctness.

Each row of the grid is one query (framed in blue, its domain written above it) followed by its ``k`` nearest
neighbours in the merged index of all domains (UnED's merged protocol, ``merged_search``): a neighbour is framed
in green when it is relevant (same domain and label, ``relevant_neighbors``), in orange otherwise; above it its
rank and its domain. The colours are the colour-blind-safe Okabe-Ito green, vermillion and blue.

The drawing is plain PIL with a fixed layout (:func:`cell_box`), so a test can read the frame colours back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf_distill.evaluation.knn import Backend
from hf_distill.evaluation.metrics import RetrievalDomain, merged_search

CORRECT_COLOR = (0, 158, 115)
WRONG_COLOR = (213, 94, 0)
QUERY_COLOR = (0, 114, 178)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
# Layout in pixels: a thumbnail inside a frame, a label line above each cell, a gap after the query column.
THUMB = 88
FRAME = 4
LABEL = 14
PAD = 6
QUERY_GAP = 18
HEADER = 16
LEGEND = "frames: blue = query, green = correct (same domain and label), orange = wrong; #rank domain"

ImageLookup = Callable[[str, int], Any]


@dataclass
class Neighbor:
    """One retrieved item: its domain, its row in that domain's index set, rank (1 = nearest), relevance."""

    domain: str
    position: int
    rank: int
    correct: bool
    score: float


@dataclass
class RetrievalRow:
    """One query of the grid (``position``: its row in its domain's query set) and its neighbours."""

    domain: str
    position: int
    neighbors: list[Neighbor]


def pick_queries(n_queries: int, count: int) -> list[int]:
    """``count`` query rows spread evenly over ``n_queries`` (all of them when there are fewer)."""
    if n_queries <= count:
        return list(range(n_queries))
    return sorted({int(round(i)) for i in np.linspace(0, n_queries - 1, count)})


def retrieval_rows(
    domains: Mapping[str, RetrievalDomain],
    queries_per_domain: int = 3,
    k: int = 5,
    backend: Backend = "auto",
) -> list[RetrievalRow]:
    """Queries of every domain with their top-``k`` neighbours in the merged index and whether each is relevant.

    Args:
        domains: domain name -> embeddings and labels (as for ``evaluate_retrieval``).
        queries_per_domain: queries shown per domain, spread evenly over its query set.
        k: neighbours per query.
        backend: k-NN backend.
    """
    if queries_per_domain < 1 or k < 1:
        raise ValueError(f"queries_per_domain and k must be >= 1, got {queries_per_domain} and {k}")
    search = merged_search(domains, k, backend)
    relevant = search.relevant()
    rows = []
    for number, name in enumerate(search.names):
        n_queries = len(domains[name].query_embeddings)
        for position in pick_queries(n_queries, queries_per_domain):
            row = search.query_offsets[number] + position
            neighbors = []
            for rank, index in enumerate(search.neighbor_ids[row], start=1):
                if index < 0:
                    break
                domain_id = int(search.index_domains[index])
                neighbors.append(
                    Neighbor(
                        domain=search.names[domain_id],
                        position=int(index - search.index_offsets[domain_id]),
                        rank=rank,
                        correct=bool(relevant[row, rank - 1]),
                        score=float(search.scores[row, rank - 1]),
                    )
                )
            rows.append(RetrievalRow(domain=name, position=position, neighbors=neighbors))
    return rows


def benchmark_image_lookups(
    benchmark: Any, split: str, domains: list[str]
) -> tuple[ImageLookup, ImageLookup]:
    """``(query image, index image)`` lookups of a benchmark's ``split`` evaluation pairs, by domain and row."""
    pairs = benchmark.eval_pairs[split]
    parts = {
        name: (benchmark.domains[name][pairs[name][0]], benchmark.domains[name][pairs[name][1]])
        for name in domains
    }
    return (
        lambda name, position: parts[name][0][position]["image"],
        lambda name, position: parts[name][1][position]["image"],
    )


def benchmark_retrieval_grid(
    benchmark: Any,
    split: str,
    retrieval: Mapping[str, RetrievalDomain],
    output: str | os.PathLike,
    queries_per_domain: int = 2,
    k: int = 5,
    backend: Backend = "auto",
) -> Path:
    """Draw the grid of embeddings already computed on a benchmark's ``split`` pairs (e.g. by
    ``RetrievalEvaluator.embed``), with the benchmark's images.

    Args:
        benchmark: the ``Benchmark`` the embeddings come from.
        split: its evaluation pairs (``"test"``, ``"val"``).
        retrieval: domain -> ``RetrievalDomain`` in the pairs' row order.
        output: the PNG to write.
        queries_per_domain / k / backend: as for :func:`retrieval_rows`.
    """
    rows = retrieval_rows(retrieval, queries_per_domain, k, backend)
    query_image, index_image = benchmark_image_lookups(benchmark, split, list(retrieval))
    return draw_retrieval_grid(rows, query_image, index_image, output)


def cell_box(row: int, column: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the framed cell at ``row``, ``column`` (column 0: the query)."""
    left = PAD + column * (THUMB + 2 * FRAME + PAD) + (QUERY_GAP if column > 0 else 0)
    top = HEADER + PAD + row * (LABEL + THUMB + 2 * FRAME + PAD) + LABEL
    return left, top, left + THUMB + 2 * FRAME, top + THUMB + 2 * FRAME


def _thumbnail(image: Any) -> Any:
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    scale = THUMB / max(image.size)
    # Small benchmark images (32 px) are blown up without blurring; large photos are reduced smoothly.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample)


def draw_retrieval_grid(
    rows: list[RetrievalRow],
    query_image: ImageLookup,
    index_image: ImageLookup,
    output: str | os.PathLike,
) -> Path:
    """Draw ``rows`` as a PNG: the query, then its neighbours framed green (correct) or orange (wrong).

    Args:
        rows: from :func:`retrieval_rows`.
        query_image: ``(domain, position) -> image`` of a query.
        index_image: ``(domain, position) -> image`` of an index item.
        output: the PNG to write (folders created).

    Returns:
        the path written.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("no query to draw")
    columns = 1 + max(len(row.neighbors) for row in rows)
    right = max(cell_box(0, columns - 1)[2] + PAD, 6 * len(LEGEND) + 2 * PAD)
    bottom = cell_box(len(rows) - 1, 0)[3] + PAD
    canvas = Image.new("RGB", (right, bottom), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 3), LEGEND, fill=TEXT_COLOR)

    def place(image: Any, row: int, column: int, color: tuple[int, int, int], label: str) -> None:
        left, top, right_edge, bottom_edge = cell_box(row, column)
        draw.rectangle((left, top, right_edge - 1, bottom_edge - 1), fill=color)
        draw.rectangle(
            (left + FRAME, top + FRAME, right_edge - FRAME - 1, bottom_edge - FRAME - 1), fill=BACKGROUND
        )
        thumb = _thumbnail(image)
        canvas.paste(
            thumb, (left + FRAME + (THUMB - thumb.width) // 2, top + FRAME + (THUMB - thumb.height) // 2)
        )
        draw.text((left, top - LABEL + 1), label[:18], fill=TEXT_COLOR)

    for number, row in enumerate(rows):
        place(query_image(row.domain, row.position), number, 0, QUERY_COLOR, f"query: {row.domain}")
        for neighbor in row.neighbors:
            color = CORRECT_COLOR if neighbor.correct else WRONG_COLOR
            place(
                index_image(neighbor.domain, neighbor.position),
                number,
                neighbor.rank,
                color,
                f"#{neighbor.rank} {neighbor.domain}",
            )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output)
    return output


__all__ = [
    "CORRECT_COLOR",
    "QUERY_COLOR",
    "WRONG_COLOR",
    "Neighbor",
    "benchmark_image_lookups",
    "benchmark_retrieval_grid",
    "RetrievalRow",
    "cell_box",
    "draw_retrieval_grid",
    "pick_queries",
    "retrieval_rows",
]
