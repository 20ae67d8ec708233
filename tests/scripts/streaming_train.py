"""A UDON run with dynamic sampling from streamed parquet shards, for tests/test_streaming.py.

Run directly (one process) or under ``accelerate launch`` (gloo). Every trained batch's example ids are appended,
with the step, to ``<output_dir>/ids_<tag>_rank<r>.jsonl``; ``--kill_at N`` kills the process with SIGKILL after
step N; a relaunch into the same output directory resumes from its last checkpoint.
"""

import argparse
import json
import os
import signal

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from hf_distill.data import ImageTransform, load_domains
from hf_distill.data.streaming import StreamingDomainBatches
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.base import last_complete_checkpoint
from hf_distill.trainers.udon import UdonTrainer


class IdLoggingTrainer(UdonTrainer):
    """Writes the ids of every trained batch (the batch key ``example_ids``) before training on it."""

    ids_path = ""

    def compute_losses(self, model, inputs):
        if model.training:
            with open(self.ids_path, "a") as handle:
                handle.write(json.dumps([self.state.global_step + 1, inputs["example_ids"]]) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        return super().compute_losses(model, inputs)


class KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--domains", default="digits,lowres_digits")
    parser.add_argument("--max_steps", type=int, default=12)
    parser.add_argument("--save_steps", type=int, default=4)
    parser.add_argument("--kill_at", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()
    state = PartialState()
    domains = args.domains.split(",")
    streams = load_domains(args.shards, domains, streaming=True)
    torch.manual_seed(0)
    model = UdonModel(
        UdonConfig(
            backbone="vit_tiny_patch16_224",
            backbone_kwargs=dict(img_size=16, patch_size=8, depth=1),
            image_size=16,
            domains=domains,
            num_classes=[streams.num_classes[name] for name in domains],
        )
    )
    training_args = UdonTrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=1e-2,
        backbone_frozen_epochs=0,
        sampling_strategy="dynamic",
        sampling_update_every=4,
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        plot_sampling_curves=False,
        evaluate_starting_point=False,
        ddp_find_unused_parameters=True,
        seed=0,
    )
    batches = StreamingDomainBatches(
        streams,
        ImageTransform(16, train=True),
        batch_size=args.batch_size,
        strategy="dynamic",
        seed=0,
        num_replicas=state.num_processes,
        rank=state.process_index,
        update_every=4,
        domain_names=domains,
        shuffle_buffer=8,
        id_column="example_id",
    )
    trainer = IdLoggingTrainer(model=model, args=training_args, train_dataset=batches)
    trainer.ids_path = os.path.join(args.output_dir, f"ids_{args.tag}_rank{state.process_index}.jsonl")
    os.makedirs(args.output_dir, exist_ok=True)
    if args.kill_at:
        trainer.add_callback(KillAt(args.kill_at))
    resume = last_complete_checkpoint(args.output_dir) is not None
    trainer.train(resume_from_checkpoint=True if resume else None)


if __name__ == "__main__":
    main()
