"""A non-editable ``pip install .`` into a fresh environment writes model cards (the template ships inside).

The fresh environment is a ``venv`` without pip whose site-packages holds a ``.pth`` line naming this venv's
site-packages, so torch and the other dependencies need no install. The path line is not a site directory, so
the ``.pth`` files there (among them the editable install's finder that maps ``hf_distill`` to the repository)
are not run: the only ``hf_distill`` the fresh interpreter can import is the installed copy. The package is
installed with ``pip install --target`` from a copy of the sources, which leaves this venv and the repository
untouched, and the card is built from a folder outside the repository.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BUILD_CARD = """
import sys
from pathlib import Path

import hf_distill
from hf_distill.hub import EmbedderCardData
from hf_distill.hub.model_card import TEMPLATE_PATH
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

installed = Path(sys.argv[1]).resolve()
assert installed in Path(hf_distill.__file__).resolve().parents, hf_distill.__file__
assert installed in TEMPLATE_PATH.resolve().parents, TEMPLATE_PATH
config = UniversalEmbedderConfig(
    backbone="resnet10t", backbone_kwargs={}, image_size=32, embed_dim=8, image_mean=[0.5] * 3, image_std=[0.5] * 3
)
card = EmbedderCardData(
    method="udon",
    repo_id="tester/installed",
    metrics={"merged/mean/R@1": 0.625},
    starting_point={"starting_point/full/merged/mean/R@1": 0.5, "starting_point/pca8/merged/mean/R@1": 0.25},
).to_model_card(UniversalEmbedderModel(config))
Path("README.md").write_text(str(card), encoding="utf-8")
"""


@pytest.mark.slow
def test_non_editable_install_builds_a_model_card(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "hf_distill", source / "hf_distill", ignore=shutil.ignore_patterns("__pycache__"))
    environment = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = environment / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    install += ["--no-index", "--target", str(site_packages), str(source)]
    subprocess.run(install, check=True, cwd=tmp_path)
    assert (site_packages / "hf_distill" / "hub" / "templates" / "embedder_card.md.j2").is_file()

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [python, "-c", BUILD_CARD, str(site_packages)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (workdir / "README.md").read_text(encoding="utf-8")
    assert "| starting point: `resnet10t` untrained, full features (512-d) | 50.00 | – | " in text
    assert "| **this model** (8-d) | 62.50 | – | " in text
    assert text.index("full features (512-d) |") < text.index("PCA-8 of its") < text.index("**this model**")
