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
import dataclasses
import json
import sys
from pathlib import Path

from oig.errors import OigError

PREFERENCES_FILE = "preferences.jsonl"
DEFAULT_BETA = 0.1
# The random tiny model after SFT: enough steps at a rate that moves it in seconds on a CPU.
TINY_DPO_HYPERPARAMETERS = {
    "learning_rate": 1e-3,
    "num_train_epochs": 20,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
}


class DPOError(OigError):
    """The DPO stage cannot start or failed for a reason the user can fix."""


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


def dpo_config(config, output_dir: Path, *, on_gpu: bool, tiny_model: bool, bf16: bool):
    """DPOConfig from training.yaml's shared hyperparameters; returns (DPOConfig, tiny overrides)."""
    from trl import DPOConfig

    from oig.train.run import DEFAULTS, OWNED, apply_momentum

    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    kw = {k: v for k, v in config.training.items() if k in fields and k not in OWNED}
    # The policy and reference are built in memory: never let DPOTrainer load (or run the code of) a model.
    kw.pop("model_init_kwargs", None)
    kw["trust_remote_code"] = False
    overrides = {}
    if tiny_model:
        for key, value in TINY_DPO_HYPERPARAMETERS.items():
            if key in kw and kw[key] != value:
                overrides[key] = {"training.yaml": kw[key], "used": value}
            kw[key] = value
    for key, value in DEFAULTS.items():
        if key in fields:
            kw.setdefault(key, value)
    kw.setdefault("seed", config.seed)
    kw.setdefault("bf16", bf16)
    kw.setdefault("disable_tqdm", not sys.stderr.isatty())
    kw["beta"] = float(config.oig.get("dpo_beta", DEFAULT_BETA))
    kw["eval_strategy"] = "no"
    if not on_gpu:
        kw.setdefault("dataloader_pin_memory", False)
    if "gradient_checkpointing" not in kw:
        kw.setdefault("activation_checkpointing", on_gpu and not tiny_model)
    if config.oig.get("momentum") is not None:
        apply_momentum(kw, config.oig["momentum"])
    try:
        return DPOConfig(output_dir=str(output_dir), **kw), overrides
    except (ValueError, TypeError) as exc:
        raise DPOError(f"training.yaml (DPO): {exc}") from None


def make_trainer(model, tokenizer, pairs: list[dict], args, config):
    """TRL's DPOTrainer with its reference model: a frozen copy, or the adapter-free base with LoRA."""
    import datasets
    from trl import DPOTrainer

    peft_config = None
    ref_model = None
    is_peft = hasattr(model, "peft_config")
    if config.oig.get("lora") or config.oig.get("load_in_4bit"):
        if not is_peft:
            from oig.train.run import lora_config

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
        "train_loss": round(float(result.metrics.get("train_loss", 0.0)), 6),
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 3),
        "resumed_from": resumed_from,
        "tiny_overrides": overrides or None,
        "metrics": history,
    }
