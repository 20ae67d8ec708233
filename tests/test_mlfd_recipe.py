"""MLFD end to end on the tiny benchmark (the library's stage runner): a ViT and a CNN teacher, two fusion levels,
students exported as universal embedders with their starting point; then ``recipes/mlfd.py`` from the command line
finds every stage done, retrains nothing and pushes each student to the local Hub; a stale cache is refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel

from hf_distill.data import load_domains
from hf_distill.models.embedder import UniversalEmbedderModel
from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierModel
from hf_distill.trainers.mlfd_evaluation import evaluate_classifier
from hf_distill.trainers.mlfd_stages import MlfdStageArguments, run_mlfd_stages

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mlfd.py"
DOMAINS = ["digits", "animals"]


def _values(tiny_benchmark_dir, output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        benchmark=str(tiny_benchmark_dir),
        domains=DOMAINS,
        teacher_backbones=["vit_tiny_patch16_224", "resnet10t"],
        backbone_kwargs={"vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2}},
        max_train_per_domain=40,
        batch_size=16,
        teacher_epochs=1,
        student_epochs=1,
        joint_epochs=1,
        joint_fusion_levels=1,
        joint_adaptor_channels=8,
        joint_out_channels=16,
        cache_views=2,
        logging_steps=1,
    )
    values.update(overrides)
    return values


@pytest.mark.slow
def test_four_stages_run_resume_push_and_refuse_a_stale_cache(tiny_benchmark_dir, hub_server, tmp_path):
    output = tmp_path / "run"
    values = _values(tiny_benchmark_dir, output)
    args = MlfdStageArguments(**values)
    benchmark = load_domains(tiny_benchmark_dir, DOMAINS)
    results = run_mlfd_stages(args, benchmark)

    for domain in DOMAINS:
        for stage in ("teachers", "students"):
            metrics = results[stage][domain]
            assert 0.0 <= metrics["val/top1"] <= 1.0 and 0.0 <= metrics["test/R@1"] <= 1.0
    assert set(results["joint_teacher"]) >= {"digits/val/top1", "animals/val/top1"}
    # Two augmented views cached per training image.
    cache_meta = json.loads((output / "cache" / "digits_train" / "feature_cache.json").read_text())
    assert cache_meta["num_rows"] == 2 * 40 and cache_meta["spec"]["views"] == 2

    joint = AutoModel.from_pretrained(output / "joint_teacher")
    assert isinstance(joint, JointTeacherModel)
    assert joint.config.teacher_names == DOMAINS
    assert [c["backbone"] for c in joint.config.teacher_configs] == ["vit_tiny_patch16_224", "resnet10t"]
    student = AutoModel.from_pretrained(output / "students" / "digits")
    assert isinstance(student, MlfdClassifierModel)
    # One student level per fused level; the ViT's 192 channels adapted to the fused maps' 16.
    assert student.config.feature_levels == [-2, -1] and student.config.distill_channels == [16, 16]

    # The starting point is the untrained student (same seed, same config) measured like the trained one.
    torch.manual_seed(args.seed)
    untrained = MlfdClassifierModel(student.config)
    start = results["students"]["digits"]["starting_point"]
    assert start == pytest.approx(evaluate_classifier(untrained, benchmark, args.eval_batch_size))
    # Distillation from the joint teacher improved the students' test retrieval over their own starting points.
    # Measured (seed 0): digits 0.361 -> 0.583, animals 0.781 -> 0.813 (mean gain 0.13); untrained students
    # (a zero learning rate, no gradients) gain nothing.
    gains = [
        results["students"][domain]["test/R@1"] - results["students"][domain]["starting_point"]["test/R@1"]
        for domain in DOMAINS
    ]
    assert sum(gains) / len(gains) > 0.05, gains

    embedder = AutoModel.from_pretrained(output / "students" / "digits" / "embedder")
    assert isinstance(embedder, UniversalEmbedderModel)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embeddings = embedder(pixel_values=pixels).embeddings
        pooled = student.eval()(pixel_values=pixels).pooled_features
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(pooled, dim=-1))
    card = (output / "students" / "digits" / "embedder" / "README.md").read_text()
    assert "mlfd" in card.lower() and "untrained" in card

    # The recipe from the command line: every stage's output is found, nothing retrained, the students pushed.
    config = tmp_path / "mlfd.yaml"
    config.write_text(yaml.safe_dump(values))
    stamps = {path: path.stat().st_mtime_ns for path in output.rglob("model.safetensors")}
    command = [sys.executable, str(RECIPE), "--config", str(config)]
    command += ["--push_to_hub", "--hub_model_id", "tester/mlfd"]
    environment = {**os.environ, **hub_server.client_env(hub_server.home)}
    run = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in output.rglob("model.safetensors")} == stamps
    again = json.loads((output / "results.json").read_text())
    assert again["students"] == json.loads(json.dumps(results["students"]))
    assert "digits: teacher/baseline val top-1" in run.stdout
    for domain in DOMAINS:
        assert f"pushed the {domain} student to tester/mlfd-{domain}" in run.stdout
        files = hub_server.repo_files(f"tester/mlfd-{domain}")
        assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    pushed = AutoModel.from_pretrained("tester/mlfd-digits", cache_dir=tmp_path / "cache").eval()
    with torch.no_grad():
        torch.testing.assert_close(pushed(pixel_values=pixels).embeddings, embeddings, rtol=0, atol=0)

    # Other cache settings with the same output folder: the existing cache is refused, naming the field.
    stale = MlfdStageArguments(**_values(tiny_benchmark_dir, output, cache_dtype="float32"))
    with pytest.raises(ValueError, match=r"fields \['extra'\] differ"):
        run_mlfd_stages(stale, benchmark)


def test_arguments_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="teacher_backbones needs one entry per domain"):
        MlfdStageArguments(domains=["a", "b", "c"], teacher_backbones=["resnet10t", "resnet10t"])
    with pytest.raises(ValueError, match="teacher_paths names unknown domain"):
        MlfdStageArguments(domains=["a"], teacher_backbones=["resnet10t"], teacher_paths='{"b": "x"}')
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        MlfdStageArguments(push_to_hub=True)
    with pytest.raises(ValueError, match="not in the benchmark"):
        run_mlfd_stages(
            MlfdStageArguments(domains=["nowhere"], teacher_backbones=["resnet10t"]), _NoDomains()
        )


class _NoDomains:
    domains: dict = {}
