"""After training, before publishing: the new model and the previous one (model.yaml before this run)
answer the eval suites (``oig.eval.stage``, training.yaml's ``Eval:``), and the ``Gate:`` decides whether
the new model may replace the branch's model.

A previous model that cannot be asked does not cost the run: the suites are scored for the new model
alone, with a warning, and the gate's comparisons pass for want of a baseline (``oig.eval.gate``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from oig import runlog
from oig.errors import OigError

MAX_TOKENS = 256  # the longest answer asked of either model in a suite


def evaluate_run(ctx) -> dict | None:
    """The ``evals`` results (``oig.eval.run`` shape) for the model just trained; None when training.yaml
    asks for nothing (no suites folder and no lm-eval tasks)."""
    from oig.eval import models, stage

    config = ctx.config
    suites = stage.suites_of(config, Path(ctx.opts.root))
    wants_lm_eval = bool(config.eval and config.eval.lm_eval and config.eval.lm_eval.tasks)
    if not suites and not wants_lm_eval:
        return None
    new = models.from_options(model=str(Path(ctx.model_dir).resolve()), max_tokens=MAX_TOKENS, concurrency=1)
    previous = _previous(ctx, models)

    def run(before):
        return stage.evaluate(config, new, before, root=Path(ctx.opts.root), suites=suites, progress=False,
                              lm_eval_model=str(Path(ctx.model_dir).resolve()), concurrency=1)

    try:
        return run(previous)
    except models.EvalError as exc:
        if previous is None:
            raise
        print(f"oig train: warning: evaluating without the previous model, which failed: {exc}", file=sys.stderr)
        return run(None)


def _previous(ctx, models):
    compare = ctx.config.eval.compare if ctx.config.eval else True
    path = ctx.opts.results_dir / runlog.MODEL_YAML
    if not compare or not path.is_file():
        return None
    try:
        return models.from_model_yaml(path, max_tokens=MAX_TOKENS, concurrency=1)
    except OigError as exc:  # a broken model.yaml must not cost the run: evaluate the new model alone
        print(f"oig train: warning: not evaluating the previous model: {exc}", file=sys.stderr)
        return None


def release_gate(ctx, evals: dict | None) -> dict | None:
    """training_log's ``gate``: whether the new model passed training.yaml's Gate (and whether a
    maintainer overrode a failure with --override-gate); None without a Gate section."""
    from oig.eval import stage

    if ctx.config.gate is None:
        return None
    results = evals or {"suites": {}, "comparison": None}
    bugs = ctx.log.get("bugs_summary")
    passed, reasons = stage.gate(ctx.config, results, bugs if isinstance(bugs, dict) else None)
    return {"passed": passed, "reasons": reasons, "overridden": bool(ctx.opts.override_gate and not passed)}
