"""UNIC losses against hand-computed values: feature loss, teacher dropping, feature standardisation."""

import math
import os

import pytest
import torch

from hf_distill.losses.standardization import FeatureStandardizer, batch_statistics, cosine_momentum
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients, teacher_dropping_loss
from hf_distill.losses.unic import UnicLoss, feature_distillation_loss

# ------------------------------------------------------------------------------------------ feature loss


def test_feature_loss_hand_computed():
    # Orthogonal unit vectors: 1 - cos = 1; smooth-L1 (beta 1) of |diff| = 1 is 1 - 0.5 = 0.5 per dim.
    # 0.5 * 1 + 0.5 * 0.5 = 0.75.
    orthogonal = feature_distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    # Parallel [3, 0] vs [1, 0]: 1 - cos = 0; smooth-L1 = (|2| - 0.5 + 0) / 2 = 0.75; 0.5 * 0.75 = 0.375.
    parallel = feature_distillation_loss(torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    # Small difference [0.5, 0] vs [0, 0.5]... use [1, 0.5] vs [1, 0]: cos = 1/sqrt(1.25);
    # smooth-L1 = (0 + 0.5 * 0.25) / 2 = 0.0625.
    small = feature_distillation_loss(torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(orthogonal, torch.tensor([0.75]))
    torch.testing.assert_close(parallel, torch.tensor([0.375]))
    torch.testing.assert_close(small, torch.tensor([0.5 * (1 - 1 / math.sqrt(1.25)) + 0.5 * 0.0625]))


def test_patch_losses_are_averaged_over_patches():
    prediction = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    torch.testing.assert_close(
        feature_distillation_loss(prediction, target), torch.tensor([(0.75 + 0.375) / 2])
    )


def test_feature_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        feature_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def _two_teacher_batch():
    # Image 0: teacher a has loss (0.75 cls, 0.375 patch), teacher b (0, 0); image 1 the other way round.
    a_cls = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    a_patch = torch.tensor([[[3.0, 0.0]], [[1.0, 0.0]]]), torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    b_cls = torch.tensor([[2.0, 2.0], [1.0, 0.0]]), torch.tensor([[2.0, 2.0], [0.0, 1.0]])
    b_patch = torch.tensor([[[1.0, 1.0]], [[3.0, 0.0]]]), torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]])
    predictions = {"a": {"cls": a_cls[0], "patch": a_patch[0]}, "b": {"cls": b_cls[0], "patch": b_patch[0]}}
    targets = {"a": {"cls": a_cls[1], "patch": a_patch[1]}, "b": {"cls": b_cls[1], "patch": b_patch[1]}}
    return predictions, targets


@pytest.mark.parametrize("reduction, scale", [("mean", 0.5), ("sum", 1.0)])
def test_unic_loss_without_dropping_hand_computed(reduction, scale):
    predictions, targets = _two_teacher_batch()
    losses = UnicLoss(["a", "b"], drop_prob=0.0, token_reduction=reduction).from_predictions(
        predictions, targets
    )
    # Per image and teacher: a = (0.75 + 0.375, 0), b = (0, 0.75 + 0.375); all 4 kept, coefficients 1/4.
    per_teacher = scale * 1.125
    torch.testing.assert_close(losses["loss"], torch.tensor(2 * per_teacher / 4))
    torch.testing.assert_close(losses["a/cls"], torch.tensor(0.75 / 2))
    torch.testing.assert_close(losses["a/patch"], torch.tensor(0.375 / 2))
    torch.testing.assert_close(losses["b/loss"], torch.tensor(per_teacher / 2))
    assert float(losses["a/keep_rate"]) == float(losses["b/keep_rate"]) == 1.0


def test_unic_loss_with_full_dropping_keeps_only_the_max_teacher():
    predictions, targets = _two_teacher_batch()
    # p close to 1: only each image's max-loss teacher survives (a for image 0, b for image 1).
    generator = torch.Generator().manual_seed(0)
    losses = UnicLoss(["a", "b"], drop_prob=0.999999).from_predictions(predictions, targets, generator)
    torch.testing.assert_close(losses["loss"], torch.tensor(0.5625))
    assert float(losses["a/keep_rate"]) == float(losses["b/keep_rate"]) == 0.5


# -------------------------------------------------------------------------------------- teacher dropping


def test_dropping_matches_the_same_random_draw():
    losses = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.4], [0.5, 0.6, 0.7], [0.3, 0.2, 0.1]])
    drop_prob = 0.5
    coefficients = teacher_dropping_coefficients(losses, drop_prob, torch.Generator().manual_seed(7))
    uniform = torch.rand(losses.shape, generator=torch.Generator().manual_seed(7))
    expected = (uniform >= drop_prob).float()
    expected[torch.arange(4), losses.argmax(1)] = 1.0
    torch.testing.assert_close(coefficients, expected / expected.sum())


def test_max_teacher_always_kept_and_coefficients_normalised():
    losses = torch.rand(64, 4, generator=torch.Generator().manual_seed(1))
    coefficients = teacher_dropping_coefficients(losses, 0.9, torch.Generator().manual_seed(2))
    assert (coefficients[torch.arange(64), losses.argmax(1)] > 0).all()
    torch.testing.assert_close(coefficients.sum(), torch.tensor(1.0))
    assert not coefficients.requires_grad


def test_drop_rate_matches_p():
    batch, teachers, drop_prob = 20000, 3, 0.3
    losses = torch.rand(batch, teachers, generator=torch.Generator().manual_seed(3))
    coefficients = teacher_dropping_coefficients(losses, drop_prob, torch.Generator().manual_seed(4))
    non_max = torch.ones_like(losses, dtype=torch.bool)
    non_max[torch.arange(batch), losses.argmax(1)] = False
    dropped = (coefficients[non_max] == 0).float().mean()
    # 40000 Bernoulli(0.3) draws: standard error 0.0023; 0.01 is over 4 standard errors.
    assert abs(float(dropped) - drop_prob) < 0.01


def test_dropping_loss_gradient_is_the_detached_coefficient():
    losses = torch.tensor([[1.0, 2.0], [3.0, 0.5]], requires_grad=True)
    output = teacher_dropping_loss(losses, 0.0, ["x", "y"])
    output["loss"].backward()
    torch.testing.assert_close(losses.grad, torch.full((2, 2), 0.25))
    torch.testing.assert_close(output["loss"], torch.tensor(6.5 / 4))
    torch.testing.assert_close(output["x/loss"], torch.tensor(2.0))
    torch.testing.assert_close(output["y/loss"], torch.tensor(1.25))


def test_dropping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="drop_prob"):
        teacher_dropping_coefficients(torch.zeros(2, 2), 1.0)
    with pytest.raises(ValueError, match="batch, teachers"):
        teacher_dropping_coefficients(torch.zeros(2), 0.5)


# -------------------------------------------------------------------------------------- standardisation


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(1.0)
    assert cosine_momentum(100, 100) == pytest.approx(0.001)
    assert cosine_momentum(50, 100) == pytest.approx(0.001 + 0.5 * 0.999)
    assert cosine_momentum(25, 100) == pytest.approx(0.001 + 0.5 * 0.999 * (1 + math.cos(math.pi / 4)))
    assert cosine_momentum(500, 100) == pytest.approx(0.001)


def test_standardisation_uses_statistics_from_before_the_update():
    standardizer = FeatureStandardizer(total_steps=4)
    first = torch.tensor([[1.0, 10.0], [3.0, 30.0]])  # mean (2, 20), population std (1, 10)
    # Step 0: statistics start at mean 0 / std 1, so the targets come out unchanged.
    torch.testing.assert_close(standardizer("t/cls", first, step=0), first, atol=0, rtol=1e-5)
    # Momentum 1 at step 0: the statistics are now exactly the first batch's.
    torch.testing.assert_close(standardizer.means["t/cls"], torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(standardizer.stds["t/cls"], torch.tensor([1.0, 10.0]))
    second = torch.tensor([[4.0, 40.0], [8.0, 80.0]])  # mean (6, 60), std (2, 20)
    out = standardizer("t/cls", second, step=1)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0], [6.0, 6.0]]), atol=1e-4, rtol=0)
    m = 0.001 + 0.5 * 0.999 * (1 + math.cos(math.pi / 4))
    torch.testing.assert_close(standardizer.means["t/cls"], torch.tensor([2 + m * 4, 20 + m * 40]))
    torch.testing.assert_close(standardizer.stds["t/cls"], torch.tensor([1 + m * 1, 10 + m * 10]))


def test_std_floor_keeps_a_dimension_constant_over_one_batch_from_exploding():
    # Dim 0 is 0 on every image of the first batch: population std (0, 1, 2), mean (0, 2, 4).
    first = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 6.0]])
    second = torch.tensor([[1.0, 2.0, 4.0]])
    plain = FeatureStandardizer(total_steps=4)
    plain("t/cls", first, step=0)
    # As released: the next batch's dim 0 is divided by eps alone.
    assert plain("t/cls", second, step=1)[0, 0] == pytest.approx(1.0 / 1e-6, rel=1e-3)
    floored = FeatureStandardizer(total_steps=4, min_std_ratio=0.5)
    floored("t/cls", first, step=0)
    # Mean std over the dims (0 + 1 + 2) / 3 = 1, floor 0.5: dim 0 divides by 0.5, dims 1 and 2 are untouched.
    out = floored("t/cls", second, step=1)
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0, 0.0]]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="min_std_ratio"):
        FeatureStandardizer(total_steps=4, min_std_ratio=-0.1)


def test_patch_statistics_pool_batch_and_tokens():
    tokens = torch.tensor([[[0.0], [2.0]], [[4.0], [6.0]]])  # 4 values: mean 3, population std sqrt(5)
    mean, std = batch_statistics(tokens)
    torch.testing.assert_close(mean, torch.tensor([3.0]))
    torch.testing.assert_close(std, torch.tensor([math.sqrt(5.0)]))


def test_standardiser_state_round_trip_and_frozen_evaluation():
    standardizer = FeatureStandardizer(total_steps=10)
    standardizer("a/patch", torch.randn(4, 3, 5), step=0)
    restored = FeatureStandardizer(total_steps=10)
    restored.load_state_dict(standardizer.state_dict())
    features = torch.randn(2, 3, 5)
    torch.testing.assert_close(
        restored("a/patch", features, step=3, update=False), standardizer("a/patch", features, step=3)
    )
    before = restored.state_dict()["means"]["a/patch"].clone()
    restored("a/patch", features + 100, step=4, update=False)
    torch.testing.assert_close(restored.means["a/patch"], before)


# Loads standardization.py by path, so the workers import torch only (not transformers through hf_distill).
_WORKER = """
import importlib.util, sys
import torch
import torch.distributed as dist
spec = importlib.util.spec_from_file_location("standardization", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
rank, world, init_file, data, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
full = torch.load(data, weights_only=True)
torch.save(module.batch_statistics(full.chunk(world)[rank]), out)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_statistics_are_gathered_across_processes(tmp_path):
    import subprocess
    import sys

    from hf_distill.losses import standardization

    full = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    torch.save(full, tmp_path / "full.pt")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                standardization.__file__,
                str(rank),
                "2",
                str(tmp_path / "init"),
                str(tmp_path / "full.pt"),
                str(tmp_path / f"out{rank}.pt"),
            ],
            env=env,
        )
        for rank in range(2)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    expected_mean, expected_std = batch_statistics(full)
    for rank in range(2):
        mean, std = torch.load(tmp_path / f"out{rank}.pt", weights_only=True)
        torch.testing.assert_close(mean, expected_mean)
        torch.testing.assert_close(std, expected_std)
    # Each half alone gives different statistics, so the agreement above comes from the all-reduce.
    assert not torch.allclose(batch_statistics(full[:4])[0], expected_mean)
