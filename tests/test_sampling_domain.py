"""DomainBatchSampler: strategies, dynamic probabilities, determinism, rank consistency and resumption."""

import numpy as np
import pytest

from hf_distill.sampling import DomainBatchSampler, group_indices_by_domain, largest_remainder_counts

# domain sizes 40, 20, 80 -> with a global batch of 4: 10, 5 and 20 batches per pass, 35 per epoch
DOMAINS = {"a": list(range(0, 40)), "b": list(range(40, 60)), "c": list(range(60, 140))}


def domain_of(batch):
    first = batch[0]
    return 0 if first < 40 else 1 if first < 60 else 2


def drain(sampler, losses=None):
    """Iterate one epoch, reporting ``losses[domain]`` for each batch when given."""
    batches = []
    for batch in sampler:
        batches.append(batch)
        if losses is not None:
            sampler.record_loss(domain_of(batch), losses[domain_of(batch)])
    return batches


def test_largest_remainder_counts():
    assert largest_remainder_counts([0.5, 0.25, 0.25], 4) == [2, 1, 1]
    # quotas 0.75, 1.5, 3.75: floors 0, 1, 3; the two largest remainders (0.75 twice) get one more each
    assert largest_remainder_counts([0.125, 0.25, 0.625], 6) == [1, 1, 4]
    assert sum(largest_remainder_counts([1 / 3] * 3, 10)) == 10


def test_round_robin_cycles_and_batches_are_single_domain():
    sampler = DomainBatchSampler(DOMAINS, batch_size=4, strategy="round_robin")
    batches = drain(sampler)
    assert len(sampler) == len(batches) == 35
    assert [domain_of(b) for b in batches[:7]] == [0, 1, 2, 0, 1, 2, 0]
    for batch in batches:
        assert len(batch) == 4 and len({domain_of([i]) for i in batch}) == 1
    # within one pass over a domain no image repeats
    b_batches = [i for batch in batches if domain_of(batch) == 1 for i in batch][:20]
    assert sorted(b_batches) == DOMAINS["b"]


def test_size_strategy_uses_exact_proportions_per_window():
    sampler = DomainBatchSampler(DOMAINS, batch_size=4, strategy="size", update_every=7, seed=3)
    domains = [domain_of(b) for b in drain(sampler)]
    for start in range(0, 35, 7):
        window = domains[start : start + 7]
        # sizes 40:20:80 = 2:1:4 of 7
        assert [window.count(d) for d in range(3)] == [2, 1, 4]
    assert domains[:7] != sorted(domains[:7])  # shuffled, not grouped


def test_balanced_strategy_is_uniform_and_shuffled():
    sampler = DomainBatchSampler(DOMAINS, batch_size=4, strategy="balanced", update_every=6, seed=1)
    domains = [domain_of(b) for b in drain(sampler)][:30]
    for start in range(0, 30, 6):
        assert [domains[start : start + 6].count(d) for d in range(3)] == [2, 2, 2]
    assert domains[:6] not in ([0, 1, 2, 0, 1, 2], sorted(domains[:6]))


def test_dynamic_first_window_round_robin_then_loss_proportional():
    sampler = DomainBatchSampler(DOMAINS, batch_size=4, strategy="dynamic", update_every=6, seed=0)
    batches = drain(sampler, losses={0: 1.0, 1: 2.0, 2: 5.0})
    assert [domain_of(b) for b in batches[:6]] == [0, 1, 2, 0, 1, 2]
    # p_d = L_d / sum L = 1/8, 2/8, 5/8 -> window counts of 6: 0.75, 1.5, 3.75 -> 1, 1, 4
    np.testing.assert_allclose(sampler.window_probabilities(1), [0.125, 0.25, 0.625])
    assert [[domain_of(b) for b in batches[6:12]].count(d) for d in range(3)] == [1, 1, 4]
    assert sampler.current_probabilities() == pytest.approx({"a": 0.125, "b": 0.25, "c": 0.625})


@pytest.mark.parametrize(
    "rule, expected",
    [
        # b keeps 0.25; a and c share the remaining 0.75 in proportion 1:3
        ("keep_mass", [0.1875, 0.25, 0.5625]),
        # released code: a, c normalised to 0.25, 0.75; b added back at 0.25; all divided by 1.25
        ("authors", [0.2, 0.2, 0.6]),
    ],
)
def test_dynamic_unseen_domain_rules(rule, expected):
    sampler = DomainBatchSampler(
        DOMAINS, batch_size=4, strategy="dynamic", update_every=3, seed=0, unseen_rule=rule
    )
    sampler._history[1] = [0.5, 0.25, 0.25]
    # window 1 (positions 3-5) trained only on domains a and c, with mean losses 1 and 3
    sampler._window_losses[1] = [[2.0, 2], [0.0, 0], [3.0, 1]]
    np.testing.assert_allclose(sampler.window_probabilities(2), expected)


def test_unknown_unseen_rule_is_refused():
    with pytest.raises(ValueError, match="unseen_rule must be one of"):
        DomainBatchSampler(DOMAINS, batch_size=4, unseen_rule="paper")


def test_same_seed_same_batches_other_seed_differs():
    first = drain(DomainBatchSampler(DOMAINS, 4, "size", seed=7, update_every=5))
    again = drain(DomainBatchSampler(DOMAINS, 4, "size", seed=7, update_every=5))
    other = drain(DomainBatchSampler(DOMAINS, 4, "size", seed=8, update_every=5))
    assert first == again and first != other


def test_epochs_reshuffle_each_domain():
    sampler = DomainBatchSampler(DOMAINS, 4, "round_robin", seed=0)
    epoch0 = drain(sampler)
    sampler.set_epoch(1)
    assert drain(sampler) != epoch0


def test_ranks_draw_the_same_domains_and_split_the_global_batch():
    losses = {0: 1.0, 1: 4.0, 2: 2.0}
    whole = drain(DomainBatchSampler(DOMAINS, 4, "dynamic", seed=2, update_every=5), losses)
    ranks = [
        drain(
            DomainBatchSampler(DOMAINS, 2, "dynamic", seed=2, update_every=5, num_replicas=2, rank=r), losses
        )
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for global_batch, part0, part1 in zip(whole, *ranks):
        assert domain_of(part0) == domain_of(part1) == domain_of(global_batch)
        assert not set(part0) & set(part1)
        assert part0 + part1 == global_batch


def test_state_dict_resumes_the_same_sequence():
    # Losses that change with every batch: the window interrupted by the crash (positions 12-15) must keep the
    # losses of the batches trained before it, or its mean (and the next window's draw) changes.
    def loss(position, batch):
        return [3.0, 1.0, 2.0][domain_of(batch)] * (1.0 + 0.37 * position) + 0.5 * (position % 3)

    reference = DomainBatchSampler(DOMAINS, 4, "dynamic", seed=5, update_every=4)
    expected = []
    for position, batch in enumerate(reference):
        expected.append(batch)
        reference.record_loss(domain_of(batch), loss(position, batch))

    interrupted = DomainBatchSampler(DOMAINS, 4, "dynamic", seed=5, update_every=4)
    iterator = iter(interrupted)
    for position in range(13):  # train 13 batches, then "crash" with one more batch read ahead
        batch = next(iterator)
        interrupted.record_loss(domain_of(batch), loss(position, batch))
    next(iterator)
    state = interrupted.state_dict()

    resumed = DomainBatchSampler(DOMAINS, 4, "dynamic", seed=5, update_every=4)
    resumed.load_state_dict(state)
    replay = []
    for position, batch in enumerate(resumed):  # the Trainer skips the already-trained batches
        replay.append(batch)
        if position >= 13:
            resumed.record_loss(domain_of(batch), loss(position, batch))
    assert replay == expected
    assert resumed.state_dict()["history"] == reference.state_dict()["history"]
    # the probabilities did move away from the static ones, so the losses were really used
    assert len({tuple(np.round(p, 6)) for p in reference.state_dict()["history"].values()}) > 2


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="domain 'b' has 20 training examples"):
        DomainBatchSampler(DOMAINS, batch_size=8, num_replicas=3)
    with pytest.raises(ValueError, match="sampling strategy"):
        DomainBatchSampler(DOMAINS, 4, strategy="random")
    sampler = DomainBatchSampler(DOMAINS, 4, "dynamic")
    next(iter(sampler))
    with pytest.raises(RuntimeError, match="assigned to 'a'"):
        sampler.record_loss("b", 1.0)
    other = DomainBatchSampler(DOMAINS, 4, "dynamic", seed=1)
    with pytest.raises(ValueError, match="seed=0"):
        other.load_state_dict(sampler.state_dict())


def test_group_indices_by_domain():
    assert group_indices_by_domain([1, 0, 1, 0, 0], ["x", "y"]) == {"x": [1, 3, 4], "y": [0, 2]}
    with pytest.raises(ValueError, match=r"domains \['y'\] have no training rows"):
        group_indices_by_domain([0, 0], ["x", "y"])
