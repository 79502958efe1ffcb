"""The DPO stage of ``oig train`` (``method: dpo`` in training.yaml).

Preference pairs come from slices' ``Preferences:`` sections, which ``oig mix`` writes unweighted to
``preferences.jsonl`` beside the SFT mixture, in TRL's conversational form (prompt messages ending
with a user turn; one assistant message each for chosen and rejected). With ``method: dpo``,
``oig train`` runs SFT on the mixture first when there is one, then TRL's ``DPOTrainer`` on the pairs,
starting from the SFT model. The reference model is the policy as DPO starts: a frozen copy of it, or,
with LoRA, the same network with its adapters disabled (TRL does this when given a ``peft_config``).

DPO takes the hyperparameters of the Training section that DPOConfig shares with SFTConfig (learning
rate, epochs, batch size, optimizer, ...) and ``dpo_beta`` (DPO's beta, default 0.1). Checkpoints go
to ``<run>/dpo-checkpoints`` and an interrupted DPO stage resumes from the last one, like SFT.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from oig.train.args import dpo_config, lora_config, merge_adapters, use_bf16, uses_adapters
from oig.train.checkpoints import resume_point, training
from oig.train.context import RunContext
from oig.train.errors import DPOError
from oig.train.record import hyperparameters, rounded, run_mean_loss

PREFERENCES_FILE = "preferences.jsonl"
OUT_OF_MEMORY = ("out of GPU memory in DPO (it holds a reference model too): lower per_device_train_batch_size "
                 "or max_length, or set lora")


def read_preferences(mixture_dir: Path) -> list[dict]:
    """The pairs of ``preferences.jsonl`` in a mixture folder (empty when there is none), each with the
    name of its ``slice`` when the file gives it."""
    path = Path(mixture_dir) / PREFERENCES_FILE
    if not path.exists():
        return []
    pairs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                pair = {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
                if isinstance(row.get("slice"), str):
                    pair["slice"] = row["slice"]
                pairs.append(pair)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DPOError(f"{path}:{n}: not a preference pair ({exc})") from None
    return pairs


def as_conversations(pairs: list[dict]) -> list[dict]:
    """Both sides of every pair as plain conversations (what the tiny tokenizer is trained on)."""
    return [{"messages": p["prompt"] + p[side], **({"slice": p["slice"]} if "slice" in p else {})}
            for p in pairs for side in ("chosen", "rejected")]


def settings(ctx: RunContext):
    """DPO's DPOConfig and the tiny model's overrides, built before the model loads (as SFT's)."""
    return dpo_config(ctx.config, ctx.run_dir / "dpo-checkpoints", on_gpu=ctx.on_gpu, tiny_model=ctx.tiny,
                      bf16=use_bf16(ctx.config, ctx.on_gpu))


def train_dpo(ctx: RunContext, model, tokenizer, pairs: list[dict], built: tuple | None = None):
    """TRL's DPOTrainer on the pairs, from ``model`` (the SFT model, or the base model for DPO alone),
    resuming when a checkpoint of this run is there; returns (trainer, training_log's dpo section).
    ``built``: what ``settings`` returned (built here when not given)."""
    model = merge_adapters(model, ctx.config)  # the SFT adapters become the weights DPO starts from
    args, overrides = built or settings(ctx)
    checkpoint_dir = Path(args.output_dir)
    resume = resume_point(checkpoint_dir, ctx.run_id, ctx.state)
    trainer = make_trainer(model, tokenizer, pairs, args, ctx.config)
    with training(checkpoint_dir, ctx.threads, OUT_OF_MEMORY):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, summary(trainer, result, ctx.shown(resume), overrides)


def make_trainer(model, tokenizer, pairs: list[dict], args, config):
    """TRL's DPOTrainer with its reference model: a frozen copy, or the adapter-free base with LoRA."""
    import datasets
    from trl import DPOTrainer

    peft_config = None
    ref_model = None
    is_peft = hasattr(model, "peft_config")
    if uses_adapters(config):
        if not is_peft:
            peft_config = lora_config(config)
    else:
        ref_model = copy.deepcopy(model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    dataset = datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    try:
        return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)
    except ValueError as exc:
        raise DPOError(f"the DPO trainer refused the settings: {exc}") from None


def summary(trainer, result, resumed_from: str | None, overrides: dict) -> dict:
    """The DPO section of training_log."""
    history = []
    for entry in trainer.state.log_history:
        if "loss" in entry and "step" in entry:
            row = {"step": entry["step"], "loss": round(float(entry["loss"]), 6)}
            for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
                if key in entry:
                    row[key.replace("/", "_")] = round(float(entry[key]), 6)
            history.append(row)
    return {
        "examples": len(trainer.train_dataset),
        "beta": trainer.args.beta,
        "steps": trainer.state.global_step,
        "train_loss": rounded(run_mean_loss(trainer.state.log_history)),  # the whole run, as SFT's
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 3),
        "resumed_from": resumed_from,
        "tiny_overrides": overrides or None,
        "metrics": history,
    }


def log_fields_alone(trainer, config) -> dict:
    """training_log's fields when DPO trained alone (no SFT data), in the order it writes them;
    ``train`` adds the number of preference pairs to ``data``."""
    return {"hyperparameters": hyperparameters(trainer.args, config), "data": {"train_examples": 0, "eval_examples": 0}}
