"""``DistillationTrainer``: the ``Trainer`` every hf_distill method subclasses.

A method only writes ``compute_losses(model, inputs) -> dict[str, Tensor]``. The base class turns that into a
training loss, logs every named component averaged over the logging window and across processes, refuses
non-finite losses with an error naming the step and domain, runs an optional retrieval evaluator inside
``evaluate()``, stores extra training state (samplers, running statistics) in every checkpoint, can train
from a custom rank-aware batch sampler, and writes a run summary at the end of training.

Length: the shared trainer holds every behaviour the three methods inherit — loss logging, evaluator,
starting point, sampler, seeded augmentation, extra checkpoint state, exact resume, run summary — and each
needs the Trainer internals the others touch (about 560 lines).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import datasets
import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, default_data_collator
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_distill.registry import get_method
from hf_distill.teachers.cache import seeded_calls
from hf_distill.trainers.callbacks import PlateauStoppingCallback, StartingPointCallback
from hf_distill.trainers.divergence import DivergenceGuard

logger = logging.getLogger(__name__)

EXTRA_STATE_NAME = "hf_distill_state.pt"
RUN_SUMMARY_NAME = "run_summary.json"
TRAINER_STATE_NAME = "trainer_state.json"


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-<step>`` folder of ``output_dir`` whose save finished, or None.

    The Trainer writes ``trainer_state.json`` last, so a run killed while saving leaves a folder without a
    readable one; such folders are skipped.

    Args:
        output_dir: the training output directory.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix = f"{PREFIX_CHECKPOINT_DIR}-"
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            steps.append(int(name[len(prefix) :]))
    for step in sorted(steps, reverse=True):
        folder = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        try:
            with open(os.path.join(folder, TRAINER_STATE_NAME)) as handle:
                json.load(handle)
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", folder)
            continue
        return folder
    return None


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (samplers, running statistics)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite."""


class _EpochForwarder(TrainerCallback):
    """Tells a custom batch sampler which epoch starts.

    accelerate only forwards ``set_epoch`` through some of its wrappers (not through the one it adds when a
    resumed run skips batches in a multi-process run), so the epoch is set from the trainer state instead.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        # ``state.epoch`` is ``e + k / steps_in_epoch``: a whole number at an epoch start, fractional on resume.
        self.sampler.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))


class _AugmentationEpoch(TrainerCallback):
    """Tells the trainer's seeded training set which epoch starts (see ``_EpochForwarder``)."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        training_set = self.trainer._seeded_training_set
        if training_set is not None:
            training_set.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))


# ``datasets`` formats whose batch read returns one contiguous array (or tensor) per column.
_ARRAY_FORMATS = ("numpy", "torch")


def draws_randomness(dataset: Any) -> bool:
    """Whether reading an example of ``dataset`` may draw from a random number generator.

    A dataset declares it with a ``draws_randomness`` attribute (the feature caches' datasets say ``False``); a
    ``datasets.Dataset`` draws only through an on-the-fly transform (``set_transform`` / ``with_transform``,
    format type ``"custom"``); any other dataset is assumed to.

    Args:
        dataset: a map-style dataset.
    """
    declared = getattr(dataset, "draws_randomness", None)
    if declared is not None:
        return bool(declared)
    if isinstance(dataset, datasets.Dataset):
        return dataset.format.get("type") == "custom"
    return True


class CollatedBatch(dict):
    """A batch read in one call, already in the model's input form (one tensor per column).

    :class:`SeededAugmentationDataset` returns it for array-formatted ``datasets.Dataset`` training sets, and
    :func:`collate_training_batch` passes it through instead of stacking rows.
    """


def collate_training_batch(data: Any) -> dict[str, Any]:
    """The trainers' collator: a :class:`CollatedBatch` as it is, a list of rows through
    ``transformers.default_data_collator``."""
    if isinstance(data, CollatedBatch):
        return dict(data)
    return default_data_collator(data)


def _batch_to_inputs(batch: Mapping[str, Any]) -> CollatedBatch:
    """Columns of a batch read as tensors, named and typed as ``default_data_collator`` names them for rows."""
    inputs = CollatedBatch()
    for name, values in batch.items():
        if isinstance(values, np.ndarray):
            if values.dtype.kind not in "biuf":
                continue  # strings and objects: the row collator drops them too
            values = torch.from_numpy(values)
        elif not isinstance(values, torch.Tensor):
            continue
        if name in ("label", "label_ids"):
            name, values = "labels", values.long() if not values.is_floating_point() else values
        inputs[name] = values
    return inputs


class SeededAugmentationDataset(Dataset):
    """Training set whose every example draws its random augmentation from its own seeded RNG.

    The loaders read one batch ahead, so with the global RNG an example's crops and flips depend on when it was
    fetched. A resumed run restores the global RNG of the checkpoint step, which the interrupted run had
    already advanced by the batch it had read ahead: its augmentation ran one batch behind. Here an example is
    transformed with ``torch``, ``random`` and ``numpy`` seeded from ``(seed, epoch, index)`` and the global
    states restored afterwards (``hf_distill.teachers.cache.seeded_calls``, as for cached views), so
    augmentation depends on which example of which epoch it is, not on when it was read, how many batches were
    skipped on resume, which data-loader worker read it or how many processes share the batch; the global RNG
    is left to the training step (dropout, teacher dropping), whose state the checkpoint restores exactly.

    Batches are read with one ``__getitems__`` call. A training set that draws nothing at random
    (:func:`draws_randomness`: cached features or maps) skips the seeding; an array-formatted
    ``datasets.Dataset`` is then read as one slice per column and returned as a :class:`CollatedBatch` when
    ``collated`` is set (the trainer sets it when its collator is :func:`collate_training_batch`).

    Args:
        dataset: the training set (a ``datasets.Dataset`` with an on-the-fly transform, or any map dataset).
        seed: the run's seed.
        collated: return array-formatted batches already collated.
    """

    def __init__(self, dataset: Any, seed: int, collated: bool = False) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.collated = collated
        self.draws_randomness = draws_randomness(dataset)
        # In shared memory: persistent data-loader workers keep their copy of the dataset across epochs, and
        # must still see the epoch the main process sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch mixed into the seeds."""
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch mixed into the seeds (other crops of the same example in every epoch).

        Args:
            epoch: zero-based epoch index.
        """
        self._epoch.fill_(int(epoch))

    def example_seed(self, index: int) -> int:
        """The augmentation seed of example ``index`` in the current epoch.

        Args:
            index: dataset index.
        """
        return self.example_seeds([index])[0]

    def example_seeds(self, indices: list[int]) -> list[int]:
        """The augmentation seeds of the examples ``indices`` in the current epoch (the epoch read once).

        Args:
            indices: dataset indices.
        """
        epoch = self.epoch
        return [
            int(np.random.SeedSequence([self.seed, epoch, int(index)]).generate_state(1)[0])
            for index in indices
        ]

    def __getitem__(self, index: int) -> Any:
        return self._read([int(index)], rows=True)[0]

    def __getitems__(self, indices: list[int]) -> Any:
        return self._read([int(index) for index in indices], rows=not self.collated)

    def _read(self, indices: list[int], rows: bool) -> Any:
        if self.draws_randomness:
            return seeded_calls(self.dataset.__getitem__, indices, self.example_seeds(indices))
        if isinstance(self.dataset, datasets.Dataset) and self.dataset.format.get("type") in _ARRAY_FORMATS:
            if rows:
                return self.dataset.__getitems__(indices)
            return _batch_to_inputs(self.dataset[indices])
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(indices)
        return [self.dataset[index] for index in indices]


class DistillationTrainer(Trainer):
    """Base trainer for multi-teacher distillation methods.

    The batch's losses come from ``loss(model, inputs)`` — a method loss module (``UdonLoss``, ``UnicLoss``,
    ``MlfdLoss``) returning ``"loss"`` plus named components, each logged separately. Method trainers add only
    what is theirs (UDON's sampler and learning-rate groups, UNIC's target standardisation) by overriding
    :meth:`compute_losses`. A trainer whose class names a registered ``method`` refuses training arguments that
    are not that method's ``training_arguments_class``.

    Args:
        *args: passed to ``transformers.Trainer``.
        loss: the loss module, called as ``loss(model, inputs) -> dict``.
        evaluator: optional callable ``evaluator(model, output_path=None, epoch=-1, steps=-1) -> dict`` (e.g.
            ``hf_distill.evaluation.RetrievalEvaluator``) run by :meth:`evaluate`; its metrics are returned with
            the ``eval_`` prefix, so ``metric_for_best_model="merged/mean/R@1"`` selects checkpoints by it.
        domain_names: names of the domains in ``domain_ids`` order, used in error messages and logs.
        **kwargs: passed to ``transformers.Trainer``.
    """

    # ``compute_losses`` returns a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    # Name of the registered method this trainer trains (``hf_distill.registry``); ``None`` for the base class.
    method: str | None = None

    def __init__(
        self,
        *args: Any,
        loss: nn.Module | None = None,
        evaluator: Callable[..., dict[str, float]] | None = None,
        domain_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # Set before Trainer.__init__, whose argument checks ask whether anything can be evaluated.
        self.evaluator = evaluator
        self.loss = loss
        super().__init__(*args, **kwargs)
        if self.data_collator is default_data_collator:
            # Same rows-to-tensors collation, and batches read whole pass through (SeededAugmentationDataset).
            self.data_collator = collate_training_batch
        if self.method is not None:
            expected = get_method(self.method).training_arguments_class
            if not isinstance(self.args, expected):
                raise TypeError(
                    f"{type(self).__name__} needs {expected.__name__}, got {type(self.args).__name__}"
                )
        self.domain_names = list(domain_names) if domain_names is not None else None
        self._checkpoint_states: dict[str, Stateful] = {}
        self._component_sums: dict[str, torch.Tensor | float] = {}
        self._component_counts: dict[str, int] = {}
        self._last_eval_metrics: dict[str, float] = {}
        self._run_summary: dict[str, Any] = {}
        self._timings: dict[str, float] = {"evaluation_s": 0.0}
        self._train_batch_sampler: Any = None
        self._resume_checkpoint: str | None = None
        self._loaded_extra_state: dict[str, Any] | None = None
        self._seeded_training_set: SeededAugmentationDataset | None = None
        self.add_callback(_AugmentationEpoch(self))
        self.divergence_guard = DivergenceGuard(window=getattr(self.args, "divergence_window", 100))
        self.add_callback(self.divergence_guard)
        # Training-time settings that live on the model (see hf_distill.layers.BackboneNormMixin).
        norm = getattr(self.args, "backbone_norm", None)
        unwrapped = self.accelerator.unwrap_model(self.model)
        if norm is not None and hasattr(unwrapped, "backbone_norm"):
            unwrapped.backbone_norm = norm
            unwrapped.train(unwrapped.training)
        if self.evaluator is not None and getattr(self.args, "evaluate_starting_point", False):
            self.add_callback(StartingPointCallback(self))
        if getattr(self.args, "stop_on_plateau", False):
            self.add_callback(
                PlateauStoppingCallback(
                    self.args.plateau_fraction,
                    self.args.plateau_min_gain,
                    self.args.plateau_min_steps,
                    trainer=self,
                )
            )

    def _validate_args(self) -> None:
        if self.evaluator is not None and self.eval_dataset is None:
            # An evaluator replaces the eval dataset: hide the Trainer's "eval_strategy needs an eval_dataset".
            self.eval_dataset, placeholder = [], True
        else:
            placeholder = False
        try:
            super()._validate_args()
        finally:
            if placeholder:
                self.eval_dataset = None

    # ----------------------------------------------------------------------------------------- losses

    def compute_losses(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return the batch's losses: ``"loss"`` (the one back-propagated) and any named components.

        Args:
            model: the (possibly wrapped) model.
            inputs: the collated batch, already on the device.
        """
        if self.loss is None:
            raise ValueError(f"{type(self).__name__} was built without a loss: pass loss=<a loss module>")
        return self.loss(model, inputs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Call :meth:`compute_losses`, check the loss is finite and record its components for logging."""
        losses = self.compute_losses(model, inputs)
        if "loss" not in losses:
            raise KeyError(
                f"{type(self).__name__}.compute_losses must return a 'loss' key, got {sorted(losses)}"
            )
        loss = losses["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(self._non_finite_message(losses, inputs))
        if model.training:
            for name, value in losses.items():
                if name == "loss":
                    continue
                # Summed as tensors on the device and read once per logging window: a float() per component
                # and step would wait for the accelerator at every step.
                value = torch.as_tensor(value).detach().float()
                self._component_sums[name] = self._component_sums.get(name, 0.0) + value
                self._component_counts[name] = self._component_counts.get(name, 0) + 1
        return (loss, losses) if return_outputs else loss

    def _non_finite_message(self, losses: Mapping[str, torch.Tensor], inputs: Mapping[str, Any]) -> str:
        domain = self.batch_domain(inputs)
        where = f"step {self.state.global_step}" + (f", domain '{domain}'" if domain is not None else "")
        values = {k: float(v.detach().float().mean()) for k, v in losses.items()}
        return (
            f"non-finite training loss at {where}: {values}. Lower the learning rate, check the inputs of that "
            "domain for corrupt images or labels, or enable gradient clipping (max_grad_norm)."
        )

    def batch_domain(self, inputs: Mapping[str, Any]) -> str | None:
        """Name of the domain of a single-domain batch, or None when the batch carries no ``domain_ids``.

        Args:
            inputs: the collated batch.
        """
        domain_ids = inputs.get("domain_ids")
        if domain_ids is None or len(domain_ids) == 0:
            return None
        domain_id = int(domain_ids[0])
        if self.domain_names is not None and 0 <= domain_id < len(self.domain_names):
            return self.domain_names[domain_id]
        return str(domain_id)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the window-averaged loss components (reduced over processes) to training logs."""
        if "loss" in logs and not any(key.startswith("eval_") for key in logs):
            logs.update(self._reduce_components())
        super().log(logs, start_time)

    def _reduce_components(self) -> dict[str, float]:
        sums = {name: float(value) for name, value in self._component_sums.items()}
        counts = self._component_counts
        self._component_sums, self._component_counts = {}, {}
        if self.accelerator.num_processes > 1:
            # Objects rather than tensors: ranks may not have seen the same component names in the window.
            gathered = gather_object([(sums, counts)])
            sums, counts = {}, {}
            for rank_sums, rank_counts in gathered:
                for name, value in rank_sums.items():
                    sums[name] = sums.get(name, 0.0) + value
                    counts[name] = counts.get(name, 0) + rank_counts[name]
        return {name: sums[name] / counts[name] for name in sorted(sums)}

    # ------------------------------------------------------------------------------------- evaluation

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Run the regular evaluation (when an eval dataset is set) and the evaluator (when given).

        Args:
            eval_dataset: passed to ``Trainer.evaluate``.
            ignore_keys: passed to ``Trainer.evaluate``.
            metric_key_prefix: prefix of the returned metric names.
        """
        metrics: dict[str, float] = {}
        if eval_dataset is not None or self.eval_dataset is not None:
            metrics.update(super().evaluate(eval_dataset, ignore_keys, metric_key_prefix))
        if self.evaluator is None:
            if not metrics:
                raise ValueError("evaluate() needs an eval_dataset or an evaluator; neither was given")
            return metrics
        start = time.perf_counter()
        evaluator_metrics = self._run_evaluator()
        elapsed = time.perf_counter() - start
        self._timings["evaluation_s"] += elapsed
        prefixed = {f"{metric_key_prefix}_{name}": float(value) for name, value in evaluator_metrics.items()}
        prefixed[f"{metric_key_prefix}_runtime"] = round(elapsed, 4)
        if self.state.epoch is not None:
            prefixed["epoch"] = self.state.epoch
        self.log(dict(prefixed))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, prefixed)
        metrics.update(prefixed)
        self._last_eval_metrics = dict(metrics)
        return metrics

    def _run_evaluator(self) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        # The evaluator runs on the main process only; the others wait for its metrics.
        result: list[Any] = [None]
        if self.accelerator.is_main_process:
            output_path = os.path.join(self.args.output_dir, "eval") if self.args.output_dir else None
            with torch.no_grad():
                result[0] = self.evaluator(
                    model,
                    output_path=output_path,
                    epoch=-1 if self.state.epoch is None else self.state.epoch,
                    steps=self.state.global_step,
                )
        if self.accelerator.num_processes > 1:
            result = broadcast_object_list(result, from_process=0)
        model.train(was_training)
        return dict(result[0])

    # -------------------------------------------------------------------- sampler and extra state

    def register_checkpoint_state(self, name: str, obj: Stateful) -> None:
        """Save ``obj.state_dict()`` in every checkpoint and restore it when resuming.

        Args:
            name: key of the object in the checkpoint's ``hf_distill_state.pt``.
            obj: an object with ``state_dict()`` and ``load_state_dict(state)``.
        """
        if not (
            callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
        ):
            raise TypeError(f"checkpoint state '{name}' needs state_dict() and load_state_dict() methods")
        self._checkpoint_states[name] = obj

    def get_train_batch_sampler(self) -> Any:
        """Return a rank-aware batch sampler for the training set, or None for the Trainer's default.

        A returned sampler must yield, on every process, that process's share of the global batch; it is not
        sharded again. If it has ``set_epoch`` it is told each epoch, and ``state_dict()`` /
        ``load_state_dict()`` make it part of every checkpoint.
        """
        return None

    def get_train_dataloader(self) -> DataLoader:
        """Build the training loader from :meth:`get_train_batch_sampler` when it returns a sampler."""
        # A stream of single-domain batches (hf_distill.data.streaming) is its own batch sampler.
        stream = self.train_dataset if getattr(self.train_dataset, "is_domain_batch_stream", False) else None
        if self._train_batch_sampler is None:
            self._train_batch_sampler = stream if stream is not None else self.get_train_batch_sampler()
            sampler = self._train_batch_sampler
            if sampler is not None:
                if hasattr(sampler, "state_dict"):
                    self.register_checkpoint_state("train_batch_sampler", sampler)
                if hasattr(sampler, "set_epoch"):
                    self.add_callback(_EpochForwarder(sampler))
                if self._resume_checkpoint is not None and hasattr(sampler, "load_state_dict"):
                    state = self._loaded_extra_state or {}
                    if "train_batch_sampler" not in state:
                        raise FileNotFoundError(
                            f"{os.path.join(self._resume_checkpoint, EXTRA_STATE_NAME)} holds no sampler state, so "
                            "the interrupted domain schedule cannot be continued; resume from a checkpoint written "
                            f"by {type(self).__name__}"
                        )
                    sampler.load_state_dict(state["train_batch_sampler"])
        sampler = self._train_batch_sampler
        if stream is not None:
            return self._stream_dataloader(stream)
        if sampler is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataloader = DataLoader(
            self._seeded(self.train_dataset),
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.args.device.type == "cuda",
            persistent_workers=self.args.dataloader_persistent_workers
            and self.args.dataloader_num_workers > 0,
        )
        prepared = self.accelerator.prepare(dataloader)
        # The sampler already yields this rank's share: make accelerate's sharding wrapper a passthrough.
        wrapper = getattr(prepared, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is sampler:
            wrapper.num_processes = 1
            wrapper.process_index = 0
        return prepared

    def _stream_dataloader(self, stream: Any) -> DataLoader:
        """Loader over a stream of collated batches, read in this process and not handed to accelerate (which
        would have the main process read and dispatch them: each process reads its own shards here)."""
        if self.args.dataloader_num_workers:
            raise ValueError(
                "a streamed training set is read in the main process, where its resumable state lives: set "
                f"dataloader_num_workers=0 (got {self.args.dataloader_num_workers})"
            )
        # The Trainer skips the trained batches of a resumed epoch; the stream hands it empty placeholders then.
        stream.skip_placeholders = not self.args.ignore_data_skip
        return DataLoader(
            stream,
            batch_size=None,
            pin_memory=self.args.dataloader_pin_memory and self.args.device.type == "cuda",
        )

    def _get_dataloader(
        self,
        dataset: Any,
        description: str,
        batch_size: int,
        sampler_fn: Callable[[Any], Any] | None = None,
        is_training: bool = False,
        dataloader_key: str | None = None,
    ) -> DataLoader:
        # The Trainer's own training loader (no custom batch sampler): seed its augmentation per example too.
        if is_training and not isinstance(dataset, torch.utils.data.IterableDataset):
            dataset = self._seeded(dataset, description)
        return super()._get_dataloader(
            dataset, description, batch_size, sampler_fn, is_training, dataloader_key
        )

    def _get_collator_with_removed_columns(
        self, data_collator: Callable, description: str | None = None
    ) -> Callable:
        # The training set's unused columns were removed from the dataset itself when its batches are read
        # whole (``_seeded``); the row-wise column remover would not understand them.
        training_set = self._seeded_training_set
        if description == "Training" and training_set is not None and training_set.collated:
            return data_collator
        return super()._get_collator_with_removed_columns(data_collator, description)

    def _seeded(self, dataset: Any, description: str | None = None) -> SeededAugmentationDataset:
        """Wrap the training set in a :class:`SeededAugmentationDataset`.

        Args:
            dataset: the training set.
            description: for the Trainer's own loader, whose unused columns are removed first (as the Trainer
                would); None for a custom batch sampler's loader, which never removed columns.
        """
        if isinstance(dataset, SeededAugmentationDataset):
            return dataset
        pruned = not self.args.remove_unused_columns
        if description is not None and isinstance(dataset, datasets.Dataset):
            dataset, pruned = self._remove_unused_columns(dataset, description=description), True
        # Whole batches as tensors only for the collator that understands them, and only when no
        # column-removing collator would see them (it expects rows).
        collated = self.data_collator is collate_training_batch and pruned
        self._seeded_training_set = SeededAugmentationDataset(dataset, self.args.seed, collated=collated)
        if self.state.epoch:
            self._seeded_training_set.set_epoch(int(math.floor(self.state.epoch + 1e-6)))
        return self._seeded_training_set

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        per_process = [
            n for n, obj in self._checkpoint_states.items() if getattr(obj, "per_process_state", False)
        ]
        if per_process and self.accelerator.num_processes > 1:
            # Each process reads its own shards: keep every process's state, in rank order.
            gathered = gather_object(
                [{name: self._checkpoint_states[name].state_dict() for name in per_process}]
            )
            per_process_states = {name: {"per_process": [g[name] for g in gathered]} for name in per_process}
        else:
            per_process_states = {}
        if self._checkpoint_states and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            state = {
                name: per_process_states.get(name) or obj.state_dict()
                for name, obj in self._checkpoint_states.items()
            }
            torch.save(state, os.path.join(folder, EXTRA_STATE_NAME))
        super()._save_checkpoint(model, trial)

    def load_extra_state(self, checkpoint: str) -> None:
        """Restore the registered objects from ``checkpoint/hf_distill_state.pt``.

        Objects registered later (the train sampler is created with the data loader) are restored when they
        are registered.

        Args:
            checkpoint: a checkpoint directory written by this trainer.
        """
        path = os.path.join(checkpoint, EXTRA_STATE_NAME)
        if not os.path.isfile(path):
            if self._checkpoint_states:
                raise FileNotFoundError(
                    f"{path} is missing: the checkpoint was not written by {type(self).__name__}, so the state of "
                    f"{sorted(self._checkpoint_states)} cannot be restored"
                )
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        self._loaded_extra_state = state
        for name, obj in self._checkpoint_states.items():
            if name not in state:
                raise KeyError(f"{path} has no state for '{name}' (it holds {sorted(state)})")
            obj.load_state_dict(state[name])

    # --------------------------------------------------------------------------------- train / summary

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """``Trainer.train`` that also restores the registered extra state and writes ``run_summary.json``.

        Args:
            resume_from_checkpoint: a checkpoint directory, or True for the last one in ``output_dir``.
            **kwargs: passed to ``Trainer.train``.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in output_dir '{self.args.output_dir}' to resume from")
        self._resume_checkpoint = resume_from_checkpoint or None
        if resume_from_checkpoint:
            self.load_extra_state(resume_from_checkpoint)
        start = time.perf_counter()
        output = super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)
        self._timings["train_s"] = time.perf_counter() - start
        self._run_summary["resumed_from"] = resume_from_checkpoint or None
        self._run_summary["train_metrics"] = dict(output.metrics)
        self.write_run_summary()
        return output

    def add_to_run_summary(self, key: str, value: Any) -> None:
        """Record a JSON-serialisable value (e.g. decode skips per domain) in ``run_summary.json``.

        Args:
            key: entry name.
            value: the value.
        """
        self._run_summary[key] = value

    def write_run_summary(self, path: str | None = None) -> str | None:
        """Write final metrics, best checkpoint, timings and recorded extras as JSON (main process only).

        Args:
            path: target file; defaults to ``<output_dir>/run_summary.json``.
        """
        if not self.args.should_save:
            return None
        path = path or os.path.join(self.args.output_dir, RUN_SUMMARY_NAME)
        summary = {
            "global_step": self.state.global_step,
            "epoch": self.state.epoch,
            "best_metric": self.state.best_metric,
            "best_model_checkpoint": self.state.best_model_checkpoint,
            "eval_metrics": self._last_eval_metrics,
            "timings_s": {k: round(v, 3) for k, v in self._timings.items()},
            "divergence_warnings": self.divergence_guard.warnings,
            **self._run_summary,
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            json.dump(summary, handle, indent=2, default=str)
        return path
