"""Benchmarks through lm-evaluation-harness's Python API (the `eval` extra): training.yaml's Eval.lm_eval.

``run_lm_eval`` wraps the model in lm-eval's HF class (``HFLM``: a model object with its tokenizer, or a
local folder / Hub id) and calls ``lm_eval.simple_evaluate`` with the configured tasks, limit and
few-shot count. Custom tasks are YAML files in a folder of the repository (``include_path``), read by a
``TaskManager``; their relative ``data_files`` are relative to the current directory, which for
``oig eval`` is the repository root. When every task asked for is a custom one, lm-eval's own task
index (thousands of YAML files, about 7 s to read) is not loaded.

The result is a plain dict: task -> metric -> value, the metric names without lm-eval's ``,none``
filter suffix (``acc``, ``acc_stderr``), plus the examples evaluated per task and each task's version.
lm-eval and torch are imported inside the function only.
"""

from __future__ import annotations

import math
from pathlib import Path

from oig.data.config import LmEvalConfig
from oig.data.messages import did_you_mean
from oig.errors import OigError

BOOTSTRAP_ITERS = 1000  # for metrics whose stderr lm-eval bootstraps (its default, 100,000, takes minutes)


def run_lm_eval(model, config: LmEvalConfig, *, tokenizer=None, device: str | None = None,
                root: Path = Path(".")) -> dict:
    """Run the configured lm-eval tasks on ``model`` (a PreTrainedModel with ``tokenizer``, or a path).

    Returns ``{"tasks": {task: {metric: value}}, "samples": {task: n}, "versions": {task: v},
    "limit", "num_fewshot", "lm_eval_version"}``. Raises OigError for an unknown task, a task whose
    data cannot be loaded, or lm-eval missing.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise OigError("lm-eval is not installed: install oig's eval extra "
                       "(pip install -c requirements/lock.txt -e \".[eval]\")") from None

    # --- the tasks: custom ones from the repository, the rest from lm-eval's own index -------------
    include = str(Path(root) / config.include_path) if config.include_path else None
    if include is not None and not Path(include).is_dir():
        raise OigError(f"Eval.lm_eval.include_path: there is no folder {config.include_path}")
    manager = task_manager(include, config.tasks)

    # --- the model ---------------------------------------------------------------------------------
    if isinstance(model, str | Path):
        lm = HFLM(pretrained=str(model), tokenizer=tokenizer, batch_size=config.batch_size,
                  device=device or _default_device(), trust_remote_code=False)
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size)

    # --- evaluate ------------------------------------------------------------------------------------
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(config.tasks), task_manager=manager,
                                      limit=config.limit, num_fewshot=config.num_fewshot,
                                      batch_size=config.batch_size, log_samples=False,
                                      bootstrap_iters=BOOTSTRAP_ITERS)
    except (OSError, ValueError) as exc:  # a dataset that cannot be loaded (offline: ConnectionError)
        raise OigError(f"lm-eval could not run {', '.join(config.tasks)}: {type(exc).__name__}: {exc}") from None
    return {
        "tasks": {task: _metrics(values) for task, values in out["results"].items()},
        "samples": {task: n.get("effective") for task, n in out.get("n-samples", {}).items()},
        "versions": dict(out.get("versions", {})),
        "limit": config.limit,
        "num_fewshot": config.num_fewshot,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }


def task_manager(include_path: str | None, tasks: list[str]):
    """A TaskManager that knows every task asked for; OigError naming the ones nobody knows."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise OigError("unknown lm-eval task" + ("s " if len(unknown) > 1 else " ")
                       + ", ".join(f"'{t}'{did_you_mean(t, manager.all_tasks)}" for t in unknown)
                       + (f" (custom tasks are read from {include_path})" if include_path else ""))
    return manager


def _metrics(values: dict) -> dict[str, float | None]:
    """``{"acc,none": 0.75, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.75, "acc_stderr": None}``."""
    out: dict[str, float | None] = {}
    for key, value in values.items():
        if "," not in key:
            continue  # alias, name, sample_len
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        out[name] = None if number is None or not math.isfinite(number) else float(number)
    return out


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
