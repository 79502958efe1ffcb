"""The trainers' settings: training.yaml's Training section as TRL's SFTConfig and DPOConfig (one
builder for both), LoRA, and the CPU thread count for the tiny model.

Both configs are built the same way (``trainer_config``): oig's own fields dropped, the tiny model's
hyperparameters over training.yaml's, oig's defaults under them, the seed, bf16 only where it helps,
no pinned memory on a CPU, activation checkpointing on a GPU, ``momentum`` sent to the optimizer in
use, and ``trust_remote_code=False``; a value TRL refuses is an error naming training.yaml.
trl and torch are imported inside functions only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from oig.errors import OigError
from oig.train import tiny
from oig.train.errors import DPOError, TrainError

# oig's defaults for SFTConfig fields training.yaml leaves unset (TRL's own defaults for the rest).
DEFAULTS = {
    "report_to": "none",
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "logging_steps": 10,
    "max_length": 1024,
}
# The embedded tiny model is a random 150k-parameter network: the learning rate, epochs and batch size
# in training.yaml are meant for the real base model and would teach it nothing, so tiny uses these.
# Measured on the shipped slices and on 20 code-word pairs: every trained question is answered exactly
# after 150 epochs at 3e-3 (750 steps, about 5 s on one CPU core); 100 epochs miss answers that copy
# words from the question, and higher rates learn less reliably in short runs (5 pairs, 100 steps).
# max_steps in training.yaml still caps a large mixture.
TINY_HYPERPARAMETERS = {
    "learning_rate": 3e-3,
    "num_train_epochs": 150,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "weight_decay": 0.0,
}
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
DEFAULT_BETA = 0.1  # DPO's beta when training.yaml has no dpo_beta
# Fields oig sets itself: where checkpoints go, and publishing (done by oig.publish.publish, not the Trainer).
OWNED = ("output_dir", "push_to_hub", "resume_from_checkpoint", "hub_model_id")
# Fields oig applies before the trainer exists: assistant_only_loss when tokenising (the dataset arrives
# with labels), model_init_kwargs when loading the model (no trainer may load, or run the code of, one).
APPLIED_ELSEWHERE = ("assistant_only_loss", "model_init_kwargs")


def use_bf16(config, on_gpu: bool) -> bool:
    if "bf16" in config.training:
        return bool(config.training["bf16"])
    if not on_gpu:
        return False  # TRL turns bf16 on even on a CPU, where it is twice as slow
    import torch

    return torch.cuda.is_bf16_supported()


def sft_config(config, output_dir: Path, *, on_gpu: bool, has_eval: bool, tiny_model: bool = False):
    """The SFTConfig: training.yaml's values over oig's defaults; returns (SFTConfig, tiny overrides)."""
    from trl import SFTConfig

    # The data order follows the run's seed unless training.yaml sets data_seed (DPO leaves it to TRL).
    return trainer_config(SFTConfig, config, output_dir, on_gpu=on_gpu, tiny_model=tiny_model,
                          tiny_values=TINY_HYPERPARAMETERS, bf16=use_bf16(config, on_gpu), has_eval=has_eval,
                          defaults={"data_seed": config.training.get("seed", config.seed)})


def dpo_config(config, output_dir: Path, *, on_gpu: bool, tiny_model: bool, bf16: bool):
    """DPOConfig from training.yaml's shared hyperparameters; returns (DPOConfig, tiny overrides)."""
    from trl import DPOConfig

    return trainer_config(DPOConfig, config, output_dir, on_gpu=on_gpu, tiny_model=tiny_model,
                          tiny_values=TINY_DPO_HYPERPARAMETERS, bf16=bf16, has_eval=False, shared_only=True,
                          fixed={"beta": float(config.oig.get("dpo_beta", DEFAULT_BETA))},
                          error=DPOError, where="training.yaml (DPO)")


def trainer_config(config_class, config, output_dir: Path, *, on_gpu: bool, tiny_model: bool, tiny_values: dict,
                   bf16: bool, has_eval: bool, shared_only: bool = False, defaults: dict | None = None,
                   fixed: dict | None = None, error: type[OigError] = TrainError, where: str = "training.yaml"):
    """``config_class`` (SFTConfig, DPOConfig) from training.yaml's Training values over oig's defaults;
    returns (the config, the tiny model's overrides: {key: {"training.yaml": ..., "used": ...}}).

    ``shared_only`` keeps only the keys ``config_class`` has (DPO reads the section written for SFT);
    ``defaults`` fill what training.yaml leaves unset, ``fixed`` replace whatever it says. A value the
    config class refuses is ``error`` naming ``where``.
    """
    check_refused(config.training, error, where)
    check_packages(config.training, on_gpu, error, where)
    fields = {f.name for f in dataclasses.fields(config_class)}
    kw = {k: v for k, v in config.training.items()
          if k not in APPLIED_ELSEWHERE and (k in fields or not shared_only)}
    kw["trust_remote_code"] = False  # the trainer loads nothing itself, and must never run model code
    overrides = {}
    if tiny_model:
        for key, value in tiny_values.items():
            if key in kw and kw[key] != value:
                overrides[key] = {"training.yaml": kw[key], "used": value}
            kw[key] = value
    for key, value in DEFAULTS.items():
        if key in fields:
            kw.setdefault(key, value)
    kw.setdefault("seed", config.seed)
    for key, value in (defaults or {}).items():
        kw.setdefault(key, value)
    kw.setdefault("disable_tqdm", not sys.stderr.isatty())  # bars in CI logs are noise: log lines instead
    kw.setdefault("bf16", bf16)
    if not on_gpu:
        kw.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator; on a CPU it only warns
    if "gradient_checkpointing" not in kw:
        # Recomputing activations saves GPU memory for real models; on a CPU or for tiny it only costs time.
        kw.setdefault("activation_checkpointing", on_gpu and not tiny_model)
    if has_eval:
        kw.setdefault("eval_strategy", "steps")
        if kw["eval_strategy"] == "steps":
            kw.setdefault("eval_steps", kw["save_steps"])
    else:
        kw["eval_strategy"] = "no"
    kw.update(fixed or {})
    momentum = config.oig.get("momentum")
    if momentum is not None:
        apply_momentum(kw, momentum)
    try:
        return config_class(output_dir=str(output_dir), **kw), overrides
    except (ValueError, TypeError) as exc:
        raise error(f"{where}: {exc}") from None


def check_refused(training: dict, error: type[OigError] = TrainError, where: str = "training.yaml") -> None:
    """Validation refuses the fields oig owns and the runner's; a config that bypassed it (built in code)
    is refused here too, every such field at once, rather than having them dropped without a word."""
    from oig.data.schemas import REFUSED_FIELDS

    refused = sorted(k for k in training if k in OWNED or k in REFUSED_FIELDS)
    if refused:
        reasons = "; ".join(f"{k}: {REFUSED_FIELDS.get(k, 'oig sets it itself (the run folder)')}" for k in refused)
        raise error(f"{where} sets fields oig does not take: {reasons}")


# What a tracker in `report_to` needs installed (the maintainers install it on the runner).
TRACKER_PACKAGES = {"trackio": "trackio", "wandb": "wandb", "tensorboard": "tensorboard"}


def check_packages(training: dict, on_gpu: bool, error: type[OigError] = TrainError,
                   where: str = "training.yaml") -> None:
    """The packages training.yaml's trackers and kernels need are there, before anything loads: a
    tracker that cannot log, or kernels that cannot run, are errors, not warnings mid-run."""
    import importlib.util

    report_to = training.get("report_to") or []
    for tracker in [report_to] if isinstance(report_to, str) else report_to:
        package = TRACKER_PACKAGES.get(tracker)
        if package and importlib.util.find_spec(package) is None:
            raise error(f"{where}: report_to {tracker} needs the {package} package on this machine: pip install "
                        f"{package} (and its credentials in the environment), or remove it from report_to")
    if training.get("use_liger_kernel"):
        if not on_gpu:
            raise error(f"{where}: use_liger_kernel needs a CUDA GPU (Liger's kernels are Triton); set it to false")
        if importlib.util.find_spec("liger_kernel") is None:
            raise error(f"{where}: use_liger_kernel needs the gpu extra: pip install -c requirements/lock.txt "
                        "-e '.[gpu]'")


def apply_momentum(kw: dict, momentum: float) -> None:
    optim = str(kw.get("optim", "adamw_torch"))
    if optim in ("sgd", "rmsprop"):
        extra = f"momentum={momentum}"
        kw["optim_args"] = f"{kw['optim_args']},{extra}" if kw.get("optim_args") else extra
    elif "adam" in optim or "lion" in optim or "lamb" in optim:
        if "adam_beta1" in kw and kw["adam_beta1"] != momentum:
            raise TrainError(f"training.yaml sets both momentum ({momentum}) and adam_beta1 "
                             f"({kw['adam_beta1']}), which is the same thing for {optim}; keep one")
        kw["adam_beta1"] = momentum
    else:
        raise TrainError(f"momentum has no meaning for the optimizer {optim!r}; remove it, or use sgd, "
                         "rmsprop or an Adam-style optimizer")


# --- LoRA ---------------------------------------------------------------------------------------------------


def uses_adapters(config) -> bool:
    """Whether training.yaml trains LoRA adapters (``lora``, or QLoRA's ``load_in_4bit``)."""
    return bool(config.oig.get("lora") or config.oig.get("load_in_4bit"))


def lora_config(config):
    """peft's LoraConfig from training.yaml's lora_* keys."""
    from peft import LoraConfig

    o = config.oig
    return LoraConfig(
        r=o.get("lora_r", 16), lora_alpha=o.get("lora_alpha", 32), lora_dropout=o.get("lora_dropout", 0.05),
        target_modules=o.get("lora_target_modules") or "all-linear", task_type="CAUSAL_LM",
    )


def merge_adapters(model, config):
    """``model`` with its LoRA adapters merged into the weights; a model without adapters, or QLoRA's
    (whose 4-bit base cannot be merged exactly), as it is."""
    if hasattr(model, "merge_and_unload") and not config.oig.get("load_in_4bit"):
        return model.merge_and_unload()
    return model


# --- CPU threads ----------------------------------------------------------------------------------------------


def tiny_cpu_threads(base_model: str, on_gpu: bool) -> int | None:
    """One CPU thread for tiny: its matrices are too small to split, so a second thread only adds
    synchronisation, and on a shared machine it makes every step wait for a busy core (measured: as fast
    alone, up to 4x faster under load). OMP_NUM_THREADS, when set, wins."""
    if base_model != tiny.NAME or on_gpu or os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1


@contextmanager
def cpu_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block, then restored (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
