"""Single-domain batch sampling over several domains (UDON, SPEC §1 "Dynamic domain sampling").

Every batch holds images of one domain. The order of domains is the *schedule*; it is a pure function of the
seed, the strategy and (for the dynamic strategy) the per-window probabilities, so every process computes the
same schedule and a resumed run continues it exactly.

Terms used below:

- ``global batch`` = ``batch_size × num_replicas`` indices of one domain; each process takes its slice.
- ``position`` = index of a batch since the start of training (``epoch × steps_per_epoch + step``).
- ``window`` = ``update_every`` consecutive positions; non-round-robin strategies draw each window's schedule
  as exact counts ``round(update_every · p_d)`` (largest remainder) in a shuffled order.

Strategies: ``round_robin`` (cycle through the domains), ``size`` (p ∝ number of training images),
``balanced`` (p uniform, shuffled), ``dynamic`` (first window round-robin; afterwards p_d = L̄_d / Σ_k L̄_k from
the mean teacher classification loss per domain over the previous window, reported with :meth:`record_loss`).

A window's probabilities are computed when its first batch is drawn, from the losses reported by then. Data
loaders read one or two batches ahead (more with worker processes), so the last batches of the previous window
are not counted: negligible for the released ``U = 1000``; keep ``U`` well above the read-ahead.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

STRATEGIES = ("round_robin", "size", "balanced", "dynamic")
LOSS_WINDOWS = ("update", "summary")
UNSEEN_RULES = ("authors", "keep_mass")


def largest_remainder_counts(probabilities: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` that are closest to ``total · p`` (Hamilton's method).

    Args:
        probabilities: non-negative values summing to 1.
        total: the number of items to share out.
    """
    quotas = np.asarray(probabilities, dtype=np.float64) * total
    counts = np.floor(quotas).astype(np.int64)
    remainder = total - int(counts.sum())
    if remainder > 0:
        # Ties broken by domain order (stable sort) so the result is deterministic.
        order = np.argsort(-(quotas - counts), kind="stable")
        counts[order[:remainder]] += 1
    return counts.tolist()


class DomainSchedule:
    """Which domain each batch position draws from: the strategy logic shared by every single-domain reader.

    Both the map-style :class:`DomainBatchSampler` and the streaming reader
    (``hf_distill.data.streaming.StreamingDomainBatches``) ask :meth:`domain_at` for the domain of a position, tell
    :meth:`mark_yielded` which positions they handed out, and receive the trained batches' losses through
    :meth:`record_loss`; the schedule depends only on the seed, the strategy and those losses.

    Args:
        domains: domain names, in domain-id order.
        sizes: number of training examples per domain (used by the ``size`` strategy).
        strategy: ``"round_robin"``, ``"size"``, ``"balanced"`` or ``"dynamic"``.
        seed: seed of the window schedules.
        update_every: window length ``U`` in batches (released UDON code: 1000).
        probability_temperature: extension, off by default (1.0): dynamic probabilities are raised to
            ``1 / temperature`` and renormalised (> 1 flattens them).
        probability_floor: extension, off by default (0.0): minimum dynamic probability of every domain.
        unseen_rule: how a dynamic update treats domains not trained in the last window. ``"authors"``
            (default, the released UDON code): the seen domains' loss proportions are normalised to sum to 1,
            the unseen ones are added back at their old probability and all are renormalised (which shrinks
            the unseen ones slightly). ``"keep_mass"`` (the paper's wording read literally): the unseen domains
            keep exactly their old probability and the seen ones share the rest.
        loss_window: which losses a dynamic update averages. ``"update"`` (default): exactly the ``U`` batches
            of the previous window. ``"summary"`` (the released UDON code): the per-domain accumulators are
            cleared only after each logging summary — after trained steps 1 and 2 and every ``summary_every``
            steps — never at an update, so an update averages every batch since the last summary: windows
            overlap and vary in length. When a step is both, the update reads the accumulators before the
            summary clears them.
        summary_every: steps between the summaries of ``loss_window="summary"``; default (``None``)
            ``max(steps_per_epoch // 10, 1)`` (the released code's tenth of an epoch), set by the sampler that
            knows the epoch length.
    """

    def __init__(
        self,
        domains: Sequence[str],
        sizes: Sequence[int],
        strategy: str = "dynamic",
        seed: int = 0,
        update_every: int = 1000,
        probability_temperature: float = 1.0,
        probability_floor: float = 0.0,
        unseen_rule: str = "authors",
        loss_window: str = "update",
        summary_every: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"sampling strategy must be one of {STRATEGIES}, got '{strategy}'")
        if not domains:
            raise ValueError("no domains given: give at least one domain")
        if len(sizes) != len(domains):
            raise ValueError(f"got {len(sizes)} domain sizes for {len(domains)} domains")
        if unseen_rule not in UNSEEN_RULES:
            raise ValueError(f"unseen_rule must be one of {UNSEEN_RULES}, got {unseen_rule!r}")
        if loss_window not in LOSS_WINDOWS:
            raise ValueError(f"loss_window must be one of {LOSS_WINDOWS}, got {loss_window!r}")
        if summary_every is not None and summary_every < 1:
            raise ValueError(f"summary_every must be >= 1 step, got {summary_every}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        if probability_temperature <= 0 or not 0.0 <= probability_floor * len(domains) <= 1.0:
            raise ValueError(
                "probability_temperature must be positive and probability_floor × number of domains at most 1, "
                f"got {probability_temperature} and {probability_floor}"
            )
        self.domains = list(domains)
        self.strategy = strategy
        self.seed = seed
        self.update_every = update_every
        self.probability_temperature = probability_temperature
        self.probability_floor = probability_floor
        self.unseen_rule = unseen_rule
        self.loss_window = loss_window
        self.summary_every = summary_every
        # loss_window="summary": per-domain [loss sum, count] since the last summary
        self._since_summary = [[0.0, 0] for _ in self.domains]
        num_domains = len(self.domains)
        if strategy == "size":
            self._static = np.asarray(sizes, dtype=np.float64) / sum(sizes)
        else:
            self._static = np.full(num_domains, 1.0 / num_domains)
        # window index → probabilities used to draw that window (dynamic strategy only)
        self._history: dict[int, list[float]] = {}
        # window index → per-domain [loss sum, count] of the batches trained in that window
        self._window_losses: dict[int, list[list[float]]] = {}
        # positions yielded but not yet trained (the loader reads ahead); record_loss consumes them in order
        self._pending: deque[tuple[int, int]] = deque()
        self._next_to_train = 0
        self._cached_window: int | None = None
        self._cached_schedule = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------------------------ schedule

    @property
    def next_to_train(self) -> int:
        """Position of the next batch to train (the number of batches trained so far)."""
        return self._next_to_train

    def window_probabilities(self, window: int) -> np.ndarray:
        """Probabilities used to draw window ``window`` (uniform for round-robin windows).

        Args:
            window: window index (position // update_every).
        """
        if self.strategy != "dynamic":
            return self._static.copy()
        if window == 0:
            return self._static.copy()
        if window not in self._history:
            self._history[window] = self._update_probabilities(window).tolist()
        return np.asarray(self._history[window])

    def _update_probabilities(self, window: int) -> np.ndarray:
        """SPEC §1: p_d ∝ mean teacher loss of domain d over the previous window; unseen domains keep p."""
        previous = self.window_probabilities(window - 1)
        losses = self._window_losses.get(window - 1)
        if losses is None:
            logger.warning("no loss recorded for sampling window %d; keeping its probabilities", window - 1)
            return previous
        seen = np.array([count > 0 for _, count in losses])
        mean_loss = np.array([total / count if count > 0 else 0.0 for total, count in losses])
        new = previous.copy()
        if seen.any() and mean_loss[seen].sum() > 0:
            if self.unseen_rule == "keep_mass":
                # Unseen domains keep their old weight; the seen ones share the rest in proportion to their loss.
                free_mass = 1.0 - previous[~seen].sum()
                new[seen] = free_mass * mean_loss[seen] / mean_loss[seen].sum()
            else:
                # Released code: seen domains normalised among themselves, unseen ones added back at their old
                # value; the final renormalisation below shrinks every weight by 1 + Σ_unseen p.
                new[seen] = mean_loss[seen] / mean_loss[seen].sum()
        if self.probability_temperature != 1.0:
            new = new ** (1.0 / self.probability_temperature)
            new /= new.sum()
        if self.probability_floor > 0.0:
            new = self.probability_floor + (1.0 - self.probability_floor * len(new)) * new / new.sum()
        # Windows older than the one just used are no longer needed.
        for old in [w for w in self._window_losses if w < window - 1]:
            del self._window_losses[old]
        return new / new.sum()

    def _window_schedule(self, window: int) -> np.ndarray:
        num_domains = len(self.domains)
        positions = np.arange(window * self.update_every, (window + 1) * self.update_every)
        if self.strategy == "round_robin" or (self.strategy == "dynamic" and window == 0):
            return positions % num_domains
        counts = largest_remainder_counts(self.window_probabilities(window), self.update_every)
        schedule = np.repeat(np.arange(num_domains), counts)
        rng = np.random.default_rng([self.seed, 1, window])
        return rng.permutation(schedule)

    def _domain_at(self, position: int) -> int:
        window = position // self.update_every
        if self._cached_window != window:
            self._cached_window, self._cached_schedule = window, self._window_schedule(window)
        return int(self._cached_schedule[position - window * self.update_every])

    def domain_at(self, position: int) -> int:
        """Domain id of batch ``position`` (computes dynamic probabilities that are not known yet).

        Args:
            position: index of the batch since the start of training.
        """
        return self._domain_at(position)

    def mark_yielded(self, position: int, domain: int) -> None:
        """Note that the batch at ``position`` was handed out; its loss is expected through :meth:`record_loss`.

        Args:
            position: the batch's position.
            domain: its domain id.
        """
        if position >= self._next_to_train:
            # Positions before it were trained before a resume and are only being skipped now.
            self._pending.append((position, domain))

    def forget_pending(self) -> None:
        """Drop the positions handed out but not trained (an abandoned iterator's read-ahead)."""
        self._pending = deque()

    # ---------------------------------------------------------------------------------- feedback

    @property
    def needs_losses(self) -> bool:
        """Whether :meth:`record_loss` steers the schedule (dynamic strategy)."""
        return self.strategy == "dynamic"

    def record_loss(self, domain: int | str, loss: float) -> None:
        """Report the teacher classification loss of the oldest batch that was yielded and not yet reported.

        Call it once per trained batch, in order, with the loss already averaged over processes so every
        process keeps the same statistics.

        Args:
            domain: the batch's domain (id or name), checked against the schedule.
            loss: the batch's mean teacher classification loss.
        """
        domain_id = self.domains.index(domain) if isinstance(domain, str) else int(domain)
        if not self._pending:
            raise RuntimeError("record_loss() called for a batch the sampler has not yielded")
        position, expected = self._pending.popleft()
        if expected != domain_id:
            raise RuntimeError(
                f"record_loss() got domain '{self.domains[domain_id]}' for batch {position}, which the schedule "
                f"assigned to '{self.domains[expected]}': report losses once per trained batch, in order"
            )
        self._next_to_train = position + 1
        window = position // self.update_every
        if self.loss_window == "summary":
            self._record_since_summary(window, position + 1, domain_id, float(loss))
            return
        totals = self._window_losses.setdefault(window, [[0.0, 0] for _ in self.domains])
        totals[domain_id][0] += float(loss)
        totals[domain_id][1] += 1

    def _record_since_summary(self, window: int, step: int, domain_id: int, loss: float) -> None:
        """``loss_window="summary"``: what an update of window ``window + 1`` reads is the accumulators as they
        stand after the window's last trained batch (before that step's summary clears them)."""
        if self.summary_every is None:
            raise ValueError(
                "loss_window='summary' needs summary_every (the steps between logging summaries)"
            )
        self._since_summary[domain_id][0] += loss
        self._since_summary[domain_id][1] += 1
        self._window_losses[window] = [list(totals) for totals in self._since_summary]
        if step in (1, 2) or step % self.summary_every == 0:
            self._since_summary = [[0.0, 0] for _ in self.domains]

    def current_probabilities(self) -> dict[str, float]:
        """Probabilities of the window of the next batch to train, keyed by domain name."""
        window = self._next_to_train // self.update_every
        if self.strategy == "round_robin" or (self.strategy == "dynamic" and window == 0):
            probs = np.full(len(self.domains), 1.0 / len(self.domains))
        elif self.strategy == "dynamic" and window not in self._history:
            # Not drawn yet: report the last known window.
            known = [w for w in self._history if w <= window]
            probs = np.asarray(self._history[max(known)]) if known else self._static
        else:
            probs = self.window_probabilities(window)
        return {name: float(p) for name, p in zip(self.domains, probs)}

    # ------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same schedule after a restart."""
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "domains": list(self.domains),
            "update_every": self.update_every,
            "next_to_train": self._next_to_train,
            "history": {int(w): list(p) for w, p in self._history.items()},
            "window_losses": {int(w): [list(v) for v in t] for w, t in self._window_losses.items()},
            "loss_window": self.loss_window,
            "summary_every": self.summary_every,
            "since_summary": [list(v) for v in self._since_summary],
        }

    # Settings a saved state must share with the run that loads it.
    _fixed_settings: tuple[str, ...] = ("strategy", "seed", "domains", "update_every")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a state from a different configuration.

        Args:
            state: a dict from :meth:`state_dict`.
        """
        for key in self._fixed_settings:
            mine = getattr(self, key)
            if state[key] != mine:
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r} but this run has {key}={mine!r}; resume "
                    "with the configuration of the interrupted run"
                )
        # States saved before loss_window existed used the default window.
        for key, default in (("loss_window", "update"), ("summary_every", self.summary_every)):
            if state.get(key, default) != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state.get(key, default)!r} but this run has "
                    f"{key}={getattr(self, key)!r}; resume with the configuration of the interrupted run"
                )
        self._since_summary = [
            [float(v[0]), int(v[1])] for v in state.get("since_summary", [[0.0, 0] for _ in self.domains])
        ]
        self._next_to_train = int(state["next_to_train"])
        self._history = {int(w): list(p) for w, p in state["history"].items()}
        self._window_losses = {
            int(w): [[float(v[0]), int(v[1])] for v in t] for w, t in state["window_losses"].items()
        }
        self._pending = deque()
        self._cached_window = None


class DomainBatchSampler(DomainSchedule):
    """Batch sampler yielding single-domain batches of dataset indices, identical across processes.

    The domain of every batch comes from :class:`DomainSchedule` (this class adds the per-domain index shuffles,
    the epochs and each process's slice of the global batch).

    Args:
        domain_indices: domain name → indices of its training examples in the (concatenated) dataset, in the
            domain order used for ``domain_ids``.
        batch_size: examples per batch *per process*.
        strategy: ``"round_robin"``, ``"size"``, ``"balanced"`` or ``"dynamic"``.
        seed: seed of every random draw (per-domain shuffles, window schedules).
        num_replicas: number of processes sharing each global batch.
        rank: this process's index in ``[0, num_replicas)``.
        update_every: window length ``U`` in batches (released UDON code: 1000).
        steps_per_epoch: batches per epoch; defaults to ``Σ_d ⌊n_d / global batch⌋`` (one pass over the data).
        probability_temperature / probability_floor / unseen_rule: see :class:`DomainSchedule`.
    """

    _fixed_settings = (*DomainSchedule._fixed_settings, "steps_per_epoch")

    def __init__(
        self,
        domain_indices: Mapping[str, Sequence[int]],
        batch_size: int,
        strategy: str = "dynamic",
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        update_every: int = 1000,
        steps_per_epoch: int | None = None,
        probability_temperature: float = 1.0,
        probability_floor: float = 0.0,
        unseen_rule: str = "authors",
        loss_window: str = "update",
        summary_every: int | None = None,
    ) -> None:
        if not domain_indices:
            raise ValueError("domain_indices is empty: give at least one domain")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < num_replicas, got batch_size={batch_size}, "
                f"rank={rank}, num_replicas={num_replicas}"
            )
        indices = [np.asarray(domain_indices[name], dtype=np.int64) for name in domain_indices]
        super().__init__(
            list(domain_indices),
            [len(idx) for idx in indices],
            strategy=strategy,
            seed=seed,
            update_every=update_every,
            probability_temperature=probability_temperature,
            probability_floor=probability_floor,
            unseen_rule=unseen_rule,
            loss_window=loss_window,
            summary_every=summary_every,
        )
        self.indices = indices
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.global_batch_size = batch_size * num_replicas
        for name, idx in zip(self.domains, self.indices):
            if len(idx) < self.global_batch_size:
                raise ValueError(
                    f"domain '{name}' has {len(idx)} training examples, fewer than one global batch "
                    f"({batch_size} per process × {num_replicas} processes); lower the batch size or drop the domain"
                )
        self.batches_per_pass = [len(idx) // self.global_batch_size for idx in self.indices]
        self.steps_per_epoch = steps_per_epoch if steps_per_epoch is not None else sum(self.batches_per_pass)
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.summary_every is None:
            self.summary_every = max(self.steps_per_epoch // 10, 1)
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields.

        Args:
            epoch: zero-based epoch index.
        """
        self.epoch = int(epoch)

    def domain_schedule(self, epoch: int) -> list[int]:
        """Domain id of every batch of ``epoch`` (computes dynamic probabilities that are not known yet).

        Args:
            epoch: zero-based epoch index.
        """
        start = epoch * self.steps_per_epoch
        return [self._domain_at(position) for position in range(start, start + self.steps_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        start = epoch * self.steps_per_epoch
        used_in_epoch = [0] * len(self.domains)
        # Batches yielded by an abandoned iterator will never be trained.
        self.forget_pending()
        for position in range(start, start + self.steps_per_epoch):
            domain = self.domain_at(position)
            batch = self._global_batch(epoch, domain, used_in_epoch[domain])
            used_in_epoch[domain] += 1
            self.mark_yielded(position, domain)
            lo = self.rank * self.batch_size
            yield batch[lo : lo + self.batch_size].tolist()

    def _global_batch(self, epoch: int, domain: int, k: int) -> np.ndarray:
        """The k-th global batch of ``domain`` in ``epoch``: a fresh shuffle of the domain for every pass."""
        per_pass = self.batches_per_pass[domain]
        data_pass, slot = divmod(k, per_pass)
        order = np.random.default_rng([self.seed, 0, epoch, domain, data_pass]).permutation(
            len(self.indices[domain])
        )
        chosen = order[slot * self.global_batch_size : (slot + 1) * self.global_batch_size]
        return self.indices[domain][chosen]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same schedule after a restart."""
        return {**super().state_dict(), "steps_per_epoch": self.steps_per_epoch, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a state from a different configuration.

        Args:
            state: a dict from :meth:`state_dict`.
        """
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])


def group_indices_by_domain(domain_ids: Sequence[int], domain_names: Sequence[str]) -> dict[str, list[int]]:
    """Group dataset row indices by domain, in ``domain_names`` order (the input of the sampler).

    Args:
        domain_ids: the domain id of every row (e.g. a dataset's ``domain_ids`` column).
        domain_names: name of every domain id.
    """
    ids = np.asarray(domain_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(domain_names)):
        raise ValueError(f"domain ids must lie in [0, {len(domain_names)}), got [{ids.min()}, {ids.max()}]")
    grouped = {name: np.flatnonzero(ids == i).tolist() for i, name in enumerate(domain_names)}
    empty = [name for name, rows in grouped.items() if not rows]
    if empty:
        raise ValueError(f"domains {empty} have no training rows")
    return grouped
