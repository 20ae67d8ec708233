"""``hf-distill show``: the retrieval grid frames each neighbour by its true relevance, on an index whose
neighbours are known by construction; the command draws benchmark and folder sources and names bad input."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.cli import main
from hf_distill.evaluation import RetrievalDomain
from hf_distill.evaluation.retrieval_grid import (
    CORRECT_COLOR,
    FRAME,
    QUERY_COLOR,
    WRONG_COLOR,
    cell_box,
    draw_retrieval_grid,
    retrieval_rows,
)
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Domain a: its queries are its index (angles 0, 10, 20, 90; labels 0 0 1 1). Domain b: one query at 3 degrees
# (label 0) against its own index at 15 (label 0) and 80 (label 1). Merged index: a0 a1 a2 a3 b0 b1.
TINY = {
    "a": RetrievalDomain(np.array([unit(0), unit(10), unit(20), unit(90)]), [0, 0, 1, 1]),
    "b": RetrievalDomain(np.array([unit(3)]), [0], np.array([unit(15), unit(80)]), [0, 1]),
}
# By hand: a0's nearest (itself excluded) are a1 (10 deg, same label), b0 (15, other domain), a2 (20, label 1);
# b's query's nearest are a0 (3 deg away), a1 (7), b0 (12, same domain and label).
EXPECTED = {
    "a": [("a", 1, True), ("b", 0, False), ("a", 2, False)],
    "b": [("a", 0, False), ("a", 1, False), ("b", 0, True)],
}


def colour_of(domain: str, part: str, position: int) -> tuple[int, int, int]:
    """A distinct solid colour per image, so the grid's thumbnails can be identified."""
    base = {"a": 40, "b": 140}[domain] + (0 if part == "index" else 60)
    return (base, 20 + 40 * position, 200 - 30 * position)


def test_frames_follow_the_known_neighbours(tmp_path):
    rows = retrieval_rows(TINY, queries_per_domain=1, k=3, backend="torch")
    assert [(row.domain, row.position) for row in rows] == [("a", 0), ("b", 0)]
    for row in rows:
        assert [(n.domain, n.position, n.correct) for n in row.neighbors] == EXPECTED[row.domain]
        assert [n.rank for n in row.neighbors] == [1, 2, 3]

    def image(part):
        # Domain a's queries are its index items: the same pictures.
        return lambda domain, position: Image.new(
            "RGB", (32, 24), colour_of(domain, "index" if domain == "a" else part, position)
        )

    path = draw_retrieval_grid(rows, image("query"), image("index"), tmp_path / "grid.png")
    grid = np.asarray(Image.open(path).convert("RGB"))

    def pixel(x, y):
        return tuple(int(v) for v in grid[y, x])

    for number, row in enumerate(rows):
        left, top, right, bottom = cell_box(number, 0)
        assert pixel(left + 1, top + 1) == QUERY_COLOR
        query_part = "index" if row.domain == "a" else "query"
        assert pixel((left + right) // 2, (top + bottom) // 2) == colour_of(row.domain, query_part, 0)
        for rank, (domain, position, correct) in enumerate(EXPECTED[row.domain], start=1):
            left, top, right, bottom = cell_box(number, rank)
            frame = CORRECT_COLOR if correct else WRONG_COLOR
            assert pixel(left + 1, top + 1) == frame
            assert pixel(right - FRAME + 1, bottom - 2) == frame
            assert pixel((left + right) // 2, (top + bottom) // 2) == colour_of(domain, "index", position)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = UniversalEmbedderConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=1),
        image_size=32,
        embed_dim=16,
        matryoshka_dims=[16, 8],
    )
    folder = tmp_path_factory.mktemp("show") / "model"
    save_embedder(UniversalEmbedderModel(config).eval(), folder)
    return folder


def test_show_draws_a_benchmark_and_a_folder(model_dir, tiny_benchmark_dir, tmp_path, capsys):
    output = tmp_path / "grid.png"
    args = [
        "show",
        "--model",
        str(model_dir),
        "--output",
        str(output),
        "--k",
        "4",
        "--queries-per-domain",
        "2",
    ]
    assert main([*args, "--benchmark", str(tiny_benchmark_dir), "--truncate-dim", "8"]) == 0
    assert "queries" in capsys.readouterr().out
    width, height = Image.open(output).size
    assert height == cell_box(2 * 5 - 1, 0)[3] + 6 and width >= cell_box(0, 4)[2] + 6
    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
        for number in range(3):
            Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(
                folder / label / f"{number}.png"
            )
    assert (
        main(
            ["show", "--model", str(model_dir), "--images", str(folder), "--output", str(output), "--k", "3"]
        )
        == 0
    )
    assert "3 queries, " in capsys.readouterr().out


def test_show_names_bad_input(model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["show", "--model", str(model_dir), "--output", str(tmp_path / "g.png")]
    with pytest.raises(ValueError, match=f"no image files .* found under {empty}"):
        main([*args, "--images", str(empty)])
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        main([*args, "--images", str(tmp_path / "missing")])
    mixed = tmp_path / "mixed"
    (mixed / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(mixed / "a" / "1.png")
    Image.new("RGB", (8, 8)).save(mixed / "a" / "b" / "2.png")
    with pytest.raises(ValueError, match="depths"):
        main([*args, "--images", str(mixed)])
    with pytest.raises(ValueError, match="must end with .png"):
        main(["show", "--model", str(model_dir), "--output", str(tmp_path / "g.jpg"), "--images", str(mixed)])


def _has_colour(path, hex_colour: str) -> bool:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return bool((np.abs(pixels.astype(int) - rgb).max(axis=1) <= 2).any())


def test_card_shows_the_grid_and_starting_point_bars(model_dir, tmp_path):
    from hf_distill.hub.card_data import EmbedderCardData
    from hf_distill.hub.model_card import PER_DOMAIN_PNG, RETRIEVAL_GRID_PNG

    model = UniversalEmbedderModel.from_pretrained(model_dir)
    metrics = {
        f"merged/{d}/{m}": v for d, v in (("a", 0.6), ("b", 0.4), ("mean", 0.5)) for m in ("R@1", "mP@5")
    }
    starting = {
        f"starting_point/{form}/merged/{d}/{m}": v
        for form, v in (("full", 0.3), ("pca16", 0.2))
        for d in ("a", "b", "mean")
        for m in ("R@1", "mP@5")
    }
    grid = draw_retrieval_grid(
        retrieval_rows(TINY, 1, 3, backend="torch"),
        lambda d, p: Image.new("RGB", (8, 8)),
        lambda d, p: Image.new("RGB", (8, 8)),
        tmp_path / "grid.png",
    )
    plain = tmp_path / "plain"
    EmbedderCardData(method="udon", metrics=metrics).to_model_card(model, plots_dir=plain)
    card = EmbedderCardData(
        method="udon", metrics=metrics, starting_point=starting, retrieval_grid=str(grid)
    ).to_model_card(model, plots_dir=tmp_path / "card")
    text = str(card)
    assert f"![retrieval examples]({RETRIEVAL_GRID_PNG})" in text
    assert text.index(PER_DOMAIN_PNG) < text.index(RETRIEVAL_GRID_PNG)
    assert (tmp_path / "card" / RETRIEVAL_GRID_PNG).read_bytes() == grid.read_bytes()
    # The starting point's two forms are drawn (orange, purple) beside the trained model's blue bars.
    assert _has_colour(tmp_path / "card" / PER_DOMAIN_PNG, "#0072b2")
    for grey in ("#e69f00", "#cc79a7"):
        assert _has_colour(tmp_path / "card" / PER_DOMAIN_PNG, grey)
        assert not _has_colour(plain / PER_DOMAIN_PNG, grey)
    with pytest.raises(FileNotFoundError, match="retrieval_grid="):
        EmbedderCardData(
            method="udon", metrics=metrics, retrieval_grid=str(tmp_path / "none.png")
        ).to_model_card(model, plots_dir=tmp_path / "x")
