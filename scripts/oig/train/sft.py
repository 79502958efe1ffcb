"""The SFT stage of ``oig train``: the train split tokenised with loss on assistant turns only (never on
one with ``weight: 0``), TRL's ``SFTTrainer`` with checkpoints every ``save_steps`` in
``<run>/checkpoints``, resumed from the last complete one (an interrupted run, rerun, carries on), then
the loss on the held-out examples (``eval.jsonl``, chosen by ``oig mix``).

``train_loss`` in training_log is the mean loss over the whole run, every logged step counted
(``record.run_mean_loss``), so it means the same on a fresh run, a resumed one and a rerun of a finished
one (which trains nothing); the trainer's own ``train_loss`` counts only the steps this process trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oig.train.args import lora_config, sft_config, uses_adapters
from oig.train.checkpoints import resume_point, training
from oig.train.context import RunContext
from oig.train.errors import TrainError
from oig.train.masking import to_dataset
from oig.train.record import hyperparameters, metrics_history, rounded, run_mean_loss

OUT_OF_MEMORY = ("out of GPU memory: lower per_device_train_batch_size (raising gradient_accumulation_steps to keep "
                 "the batch) or max_length, or set lora / load_in_4bit; rerunning resumes from the last checkpoint")


@dataclass
class SFTRun:
    """A finished SFT stage: its trainer (the model DPO starts from) and what training_log records of it."""

    trainer: Any
    args: Any  # the SFTConfig it trained with
    result: Any  # what trainer.train() returned
    eval_metrics: dict
    resumed: Path | None  # the checkpoint it resumed from
    tiny_overrides: dict
    data: dict  # training_log's data counts

    def log_fields(self, ctx: RunContext) -> dict:
        """training_log's fields for the run, in the order it writes them."""
        trainer = self.trainer
        tokens = int(getattr(trainer, "_total_train_tokens", 0) or 0)
        runtime = float(self.result.metrics.get("train_runtime") or 0.0)
        return {
            "resumed_from": ctx.shown(self.resumed),
            "hyperparameters": hyperparameters(self.args, ctx.config),
            "tiny_overrides": self.tiny_overrides or None,
            "data": self.data,
            "metrics": metrics_history(trainer.state.log_history),
            "train_loss": rounded(run_mean_loss(trainer.state.log_history)),
            "eval_loss": rounded(self.eval_metrics.get("eval_loss")),
            "steps": trainer.state.global_step,
            "train_runtime_s": round(runtime, 3),
            "tokens": tokens,
            "tokens_per_second": round(tokens / runtime, 1) if tokens and runtime > 0 else None,
        }


def train_sft(ctx: RunContext, model, tokenizer, template: str, train_records: list[dict],
              eval_records: list[dict]) -> SFTRun:
    """Tokenise, train (resuming when a checkpoint of this run is there) and evaluate."""
    import datasets

    datasets.disable_progress_bars()  # a bar per tiny map call drowns the training progress
    assistant_only = ctx.config.training.get("assistant_only_loss", True)
    train_ds, dropped = to_dataset(train_records, tokenizer, template, assistant_only)
    eval_ds, _ = to_dataset(eval_records, tokenizer, template, assistant_only) if eval_records else (None, 0)
    if train_ds is None:
        raise TrainError("no conversation in the mixture has an assistant turn to learn (all weight 0?)")

    checkpoint_dir = ctx.run_dir / "checkpoints"
    args, overrides = sft_config(ctx.config, checkpoint_dir, on_gpu=ctx.on_gpu, has_eval=eval_ds is not None,
                                 tiny_model=ctx.tiny)
    resume = resume_point(checkpoint_dir, ctx.run_id, ctx.state)
    trainer = make_trainer(model, tokenizer, args, train_ds, eval_ds, ctx.config)
    with training(checkpoint_dir, ctx.threads, OUT_OF_MEMORY):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    # What was trained and evaluated: the lines of mixture.jsonl and of eval.jsonl.
    data = {"train_examples": len(train_records), "eval_examples": len(eval_records),
            "dropped_without_trainable_tokens": dropped}
    return SFTRun(trainer, args, result, eval_metrics, resume, overrides, data)


def make_trainer(model, tokenizer, args, train_ds, eval_ds, config):
    from trl import SFTTrainer

    peft_config = lora_config(config) if uses_adapters(config) else None
    try:
        return SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=peft_config)
    except ValueError as exc:
        raise TrainError(f"the trainer refused the settings: {exc}") from None
