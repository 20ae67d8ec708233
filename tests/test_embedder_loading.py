"""The three ways to load a saved embedder, each in a fresh Python process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.hub import save_embedder
from hf_distill.models.embedder import (
    UniversalEmbedderConfig,
    UniversalEmbedderImageProcessor,
    UniversalEmbedderModel,
)

pytestmark = pytest.mark.slow

# Makes any import of hf_distill fail, proving the remote-code paths do not need the package.
BLOCK_HF_DISTILL = """
import sys
class _BlockHfDistill:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_distill":
            raise ImportError("hf_distill must not be imported in this process")
        return None
sys.meta_path.insert(0, _BlockHfDistill())
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("embedder_loading")
    config = UniversalEmbedderConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=2),
        image_size=32,
        resize_size=36,
        embed_dim=16,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    torch.manual_seed(0)
    model = UniversalEmbedderModel(config).eval()
    processor = UniversalEmbedderImageProcessor.from_model_config(config)
    model_dir = save_embedder(model, root / "model", processor)
    rng = np.random.default_rng(0)
    paths = []
    for index, (shape, mode) in enumerate([((40, 50, 3), "RGB"), ((36, 36), "L"), ((64, 40, 3), "RGB")]):
        path = root / f"image_{index}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(str(path))
    with torch.no_grad():
        pixel_values = processor([Image.open(p) for p in paths], return_tensors="pt").pixel_values
        expected = model(pixel_values=pixel_values).embeddings.numpy()
    return {"dir": str(model_dir), "paths": paths, "expected": expected, "root": root}


def start_fresh(code: str, root: Path) -> subprocess.Popen:
    """Start ``code`` in a new interpreter outside the repository; it prints one JSON object last."""
    env = {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_runs(saved) -> dict:
    """The three load paths in two fresh interpreters, started together so that their imports overlap: one
    that imports hf_distill, and one where importing it fails, which loads through remote code and then runs
    the pipeline (both must work without the package; one interpreter start saved)."""
    images = f"[Image.open(p) for p in {saved['paths']!r}]"
    codes = {
        "hf_distill": f"""
import json, torch
from PIL import Image
import hf_distill
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained({saved["dir"]!r}).eval()
processor = AutoImageProcessor.from_pretrained({saved["dir"]!r})
with torch.no_grad():
    embeddings = model(**processor({images}, return_tensors="pt")).embeddings
print(json.dumps({{"hf_distill": {{"module": type(model).__module__, "embeddings": embeddings.tolist()}}}}))
""",
        "without_hf_distill": BLOCK_HF_DISTILL
        + f"""
import json, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline
model = AutoModel.from_pretrained({saved["dir"]!r}, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained({saved["dir"]!r}, trust_remote_code=True)
with torch.no_grad():
    embeddings = model(**processor({images}, return_tensors="pt")).embeddings
loaded = [name for name in sys.modules if name.split(".")[0] == "hf_distill"]
remote_code = {{"module": type(model).__module__, "loaded": loaded, "embeddings": embeddings.tolist()}}
extractor = pipeline("image-feature-extraction", model={saved["dir"]!r}, trust_remote_code=True)
vectors = [output[0] for output in extractor({saved["paths"]!r})]
print(json.dumps({{"remote_code": remote_code, "pipeline": {{"vectors": vectors}}}}))
""",
    }
    processes = {name: start_fresh(code, saved["root"]) for name, code in codes.items()}
    return {key: value for process in processes.values() for key, value in finish(process).items()}


def test_auto_model_after_importing_hf_distill(saved, fresh_runs):
    out = fresh_runs["hf_distill"]
    assert out["module"] == "hf_distill.models.embedder.modeling_embedder"
    np.testing.assert_allclose(np.array(out["embeddings"]), saved["expected"], rtol=0, atol=1e-5)


def test_auto_model_with_remote_code_without_hf_distill(saved, fresh_runs):
    out = fresh_runs["remote_code"]
    assert out["loaded"] == [] and out["module"].startswith("transformers_modules.")
    np.testing.assert_allclose(np.array(out["embeddings"]), saved["expected"], rtol=0, atol=1e-5)


def test_pipeline_with_remote_code_gives_model_vectors(saved, fresh_runs):
    vectors = np.array(fresh_runs["pipeline"]["vectors"])
    assert vectors.shape == saved["expected"].shape
    np.testing.assert_allclose(vectors, saved["expected"], rtol=0, atol=1e-5)


def test_saved_folder_is_self_contained(saved):
    files = sorted(p.name for p in Path(saved["dir"]).iterdir())
    assert files == [
        "config.json",
        "configuration_embedder.py",
        "image_processing_embedder.py",
        "model.safetensors",
        "modeling_embedder.py",
        "preprocessor_config.json",
    ]
    for name in ("configuration_embedder.py", "modeling_embedder.py", "image_processing_embedder.py"):
        source = (Path(saved["dir"]) / name).read_text()
        imports = [line for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))]
        assert imports and not [line for line in imports if "hf_distill" in line], name
