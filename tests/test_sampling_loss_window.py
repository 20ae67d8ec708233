"""The released UDON code's loss window (``loss_window="summary"``): per-domain accumulators cleared only at
logging summaries, so windows overlap and vary in length. Probabilities computed by hand."""

import sys
from pathlib import Path

import pytest

from hf_distill.sampling import DomainBatchSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_udon_trainer import tiny_args, tiny_dataset, tiny_model  # noqa: E402

from hf_distill.trainers.udon import UdonTrainer  # noqa: E402

# Window 0 is round-robin (a, b, a, b); losses by position.
FIRST_WINDOW = [1.0, 3.0, 2.0, 1.0]
# From window 1 on, a constant loss per domain.
LATER = {0: 2.0, 1: 4.0}


def run(loss_window: str, positions: int = 8):
    sampler = DomainBatchSampler(
        {"a": range(8), "b": range(8, 16)},
        batch_size=1,
        update_every=4,
        seed=0,
        loss_window=loss_window,
        summary_every=3,
    )
    batches = iter(sampler)
    domains = []
    for position in range(positions):
        next(batches)  # draws the batch (and, at a window's first batch, that window's probabilities)
        domain = sampler._pending[-1][1]
        domains.append(domain)
        sampler.record_loss(domain, FIRST_WINDOW[position] if position < 4 else LATER[domain])
    return sampler, domains


def test_summary_window_probabilities_by_hand():
    sampler, domains = run("summary")
    # Summaries (and clears) after trained steps 1, 2, 3 and 6. The update opening window 1 (after step 4) sees
    # only step 4 (b, loss 1.0): b is the only seen domain -> b = 1/1, a keeps its 1/2, renormalised over 1.5.
    assert sampler.window_probabilities(1) == pytest.approx([0.5 / 1.5, 1.0 / 1.5])
    # Window 1 draws round(4 · (1/3, 2/3)) = (1, 3) batches; with seed 0 its order is a, b, b, b (pinned).
    assert domains == [0, 1, 0, 1, 0, 1, 1, 1]
    # The update opening window 2 (after step 8) sees steps 7 and 8 only (cleared after step 6): both b, loss 4.
    # a is unseen again: b = 1, a keeps 1/3 -> (1/3, 1) / (4/3) = (1/4, 3/4).
    assert sampler.window_probabilities(2) == pytest.approx([0.25, 0.75])


def test_default_window_is_the_last_update_every_batches():
    sampler, _ = run("update")
    # Window 0: a = (1 + 2) / 2 = 1.5, b = (3 + 1) / 2 = 2 -> (1.5, 2) / 3.5.
    assert sampler.window_probabilities(1) == pytest.approx([1.5 / 3.5, 2.0 / 3.5])
    # Window 1 (same counts (1, 3)): a = 2, b = 4 -> (1/3, 2/3).
    assert sampler.window_probabilities(2) == pytest.approx([1 / 3, 2 / 3])


def test_summary_window_spans_an_update_when_summaries_are_rarer():
    # update_every 2, clears after steps 1, 2, 5 (and 10). Batches each update reads: after step 2 only step 2;
    # after 4: steps 3-4; after 6: step 6 (step 5 cleared); after 8: steps 6-8 — three batches, longer than
    # U = 2, and step 6 is read by two updates (overlapping windows).
    sampler = DomainBatchSampler(
        {"a": range(8), "b": range(8, 16)},
        batch_size=1,
        update_every=2,
        loss_window="summary",
        summary_every=5,
    )
    batches = iter(sampler)
    counts = {}
    for position in range(8):
        next(batches)
        sampler.record_loss(sampler._pending[-1][1], 1.0)
        if (position + 1) % 2 == 0:
            window = position // 2
            counts[window] = sum(count for _, count in sampler._window_losses[window])
    assert counts == {0: 1, 1: 2, 2: 1, 3: 3}


def test_state_round_trip_and_refusals():
    sampler, _ = run("summary", positions=6)
    restored = DomainBatchSampler(
        {"a": range(8), "b": range(8, 16)},
        batch_size=1,
        update_every=4,
        loss_window="summary",
        summary_every=3,
    )
    restored.load_state_dict(sampler.state_dict())
    assert restored.state_dict() == sampler.state_dict()
    default = DomainBatchSampler({"a": range(8), "b": range(8, 16)}, batch_size=1, update_every=4)
    with pytest.raises(ValueError, match="loss_window='summary'"):
        default.load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="loss_window must be one of"):
        DomainBatchSampler({"a": range(8)}, batch_size=1, loss_window="epoch")


def test_udon_argument_reaches_the_sampler(tmp_path):
    args = tiny_args(tmp_path, sampling_loss_window="summary", sampling_summary_every=3)
    trainer = UdonTrainer(model=tiny_model(), args=args, train_dataset=tiny_dataset())
    sampler = trainer.get_train_batch_sampler()
    assert (sampler.loss_window, sampler.summary_every) == ("summary", 3)
    with pytest.raises(ValueError, match="sampling_loss_window"):
        tiny_args(tmp_path, sampling_loss_window="epoch")
