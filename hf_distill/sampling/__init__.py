"""Single-domain batch samplers: round-robin, dataset-size, balanced and UDON's dynamic sampling."""

from hf_distill.sampling.domain_sampler import (
    LOSS_WINDOWS,
    STRATEGIES,
    UNSEEN_RULES,
    DomainBatchSampler,
    DomainSchedule,
    group_indices_by_domain,
    largest_remainder_counts,
)

__all__ = [
    "LOSS_WINDOWS",
    "STRATEGIES",
    "UNSEEN_RULES",
    "DomainBatchSampler",
    "DomainSchedule",
    "group_indices_by_domain",
    "largest_remainder_counts",
]
