"""The SFT stage of ``oig train``: the train split tokenised once (``tokenise``: cached in the run
folder, shared by every process) with loss on assistant turns only (never on one with ``weight: 0``),
TRL's ``SFTTrainer`` with checkpoints every ``save_steps`` in ``<run>/checkpoints``, resumed from the last complete one (an interrupted run, rerun, carries on), then
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
from oig.train.record import hyperparameters, metrics_history, rounded, run_mean_loss
from oig.train.tokenise import CACHE_DIR, tokenise

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


def settings(ctx: RunContext, has_eval: bool):
    """SFT's SFTConfig and the tiny model's overrides. Built before the model loads: under ZeRO-3 the
    training arguments are what makes transformers create the model already split across the GPUs."""
    return sft_config(ctx.config, ctx.run_dir / "checkpoints", on_gpu=ctx.on_gpu, has_eval=has_eval,
                      tiny_model=ctx.tiny)


def train_sft(ctx: RunContext, model, tokenizer, template: str, train_records: list[dict],
              eval_records: list[dict], built: tuple | None = None) -> SFTRun:
    """Tokenise (once, cached in the run folder), train (resuming when a checkpoint of this run is there)
    and evaluate. ``built``: what ``settings`` returned (built here when not given)."""
    import datasets

    datasets.disable_progress_bars()  # a bar per tiny map call drowns the training progress
    assistant_only = ctx.config.training.get("assistant_only_loss", True)
    cache = {"cache_dir": ctx.run_dir / CACHE_DIR, "num_proc": ctx.config.training.get("dataset_num_proc"),
             "state": ctx.state}
    train_ds, dropped = tokenise(train_records, tokenizer, template, assistant_only, **cache)
    eval_ds, _ = tokenise(eval_records, tokenizer, template, assistant_only, **cache) if eval_records else (None, 0)
    if train_ds is None:
        raise TrainError("no conversation in the mixture has an assistant turn to learn (all weight 0?)")

    args, overrides = built or settings(ctx, has_eval=eval_ds is not None)
    if eval_ds is None and args.eval_strategy != "no":  # every held-out example had nothing to learn
        args, overrides = settings(ctx, has_eval=False)
    checkpoint_dir = Path(args.output_dir)
    resume = resume_point(checkpoint_dir, ctx.run_id, ctx.state)
    if args.packing:
        check_packing(model, args, sharded=ctx.sharded)  # packed conversations must not see each other
    trainer = make_trainer(model, tokenizer, args, train_ds, eval_ds, ctx.config)
    with training(checkpoint_dir, ctx.threads, OUT_OF_MEMORY):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        eval_metrics = trainer.evaluate() if eval_ds is not None else {}
    # What was trained and evaluated: the lines of mixture.jsonl and of eval.jsonl.
    data = {"train_examples": len(train_records), "eval_examples": len(eval_records),
            "dropped_without_trainable_tokens": dropped}
    return SFTRun(trainer, args, result, eval_metrics, resume, overrides, data)


PACKING_FIX = ("set `packing: false`, or on a GPU `model_init_kwargs: {attn_implementation: flash_attention_2}` "
               "(it separates packed conversations by their positions)")


def check_packing(model, args, sharded: bool = False) -> None:
    """Refuse ``packing`` unless the model keeps packed conversations apart, measured on the model itself.

    TRL's packing (``packing_strategy: bfd``, padding-free) puts several conversations in one row and
    marks each one's start by resetting ``position_ids``; no attention mask goes with it. Whether
    attention then stays inside each conversation depends on the attention implementation and the
    model's code (transformers 5.23 builds a per-conversation mask from the positions for eager, sdpa
    and flex attention; flash attention uses them directly; a model with its own masking may not). So
    two short sequences are run packed and alone, and their logits must agree. ``wrapped`` packing cuts
    conversations at fixed lengths and lets them attend across: refused. With the weights sharded
    (``distributed: fsdp`` or ``zero3``) the model cannot run outside the trainer; validation then
    requires flash attention, which keeps packed conversations apart by their positions.
    """
    import torch

    if getattr(args, "packing_strategy", "bfd") != "bfd":
        raise TrainError(f"packing_strategy {args.packing_strategy!r} lets packed conversations attend to each other "
                         "and cuts them apart; use the default `bfd` (each conversation whole, kept apart), or "
                         "`packing: false`")
    if sharded:  # the weights are split across the GPUs: training.yaml's validation required flash attention
        return
    first, second = torch.arange(3, 11), torch.arange(11, 17)  # token ids every vocabulary has
    device = next(model.parameters()).device
    ids = torch.cat([first, second]).unsqueeze(0).to(device)
    positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))]).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # As SFTTrainer.compute_loss calls it: no cache (with one, no packed mask is built at all).
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, len(first):].float()
            alone = model(input_ids=second.unsqueeze(0).to(device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    # fp32 agrees to rounding; bf16/fp16 kernels differ a little: a leak changes the logits far more.
    low_precision = next(model.parameters()).dtype != torch.float32
    limit = (0.05 if low_precision else 1e-4) * (float(alone.abs().max()) or 1.0) + 1e-5
    if float((packed - alone).abs().max()) > limit:
        impl = getattr(model.config, "_attn_implementation", None) or "default"
        raise TrainError(f"`packing: true` would let packed conversations attend to each other with this model's "
                         f"attention ({impl}): {PACKING_FIX}")


def make_trainer(model, tokenizer, args, train_ds, eval_ds, config):
    from trl import SFTTrainer

    peft_config = lora_config(config) if uses_adapters(config) else None
    try:
        return SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, peft_config=peft_config)
    except ValueError as exc:
        raise TrainError(f"the trainer refused the settings: {exc}") from None
