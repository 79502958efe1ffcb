"""Evaluation as one step, shared by ``oig eval`` and ``oig train``: training.yaml's ``Eval:`` section
turned into a run of the suites, the lm-eval benchmarks and the judged comparison, then the ``Gate:``.

- ``evaluate(config, model, previous)``: the suites in ``Eval.suites`` (default ``evals/``; no folder, no
  suites), ``Eval.lm_eval`` when it names tasks (the new model only; it needs the ``eval`` extra and
  weights on this machine), and the judged comparison on ``Eval.comparison_suite`` with ``Eval.judge``
  when there is a previous model. Returns the results dict of :func:`oig.eval.run.run_eval`.
- ``gate(config, results, bugs_summary)``: ``(passed, reasons)`` from ``Gate:``; no Gate section passes.
- ``for_log(results)``: the results without the per-case answers, for training_log.
"""

from __future__ import annotations

from pathlib import Path

from oig.data.config import TrainingConfig
from oig.eval.models import Model


def suites_of(config: TrainingConfig, root: Path = Path("."), override: Path | None = None) -> list:
    """The suites to run: ``override`` (``--suites``) or ``Eval.suites``; none when that folder is absent."""
    from oig.data.evals import load_suites

    folder = Path(override) if override is not None else Path(root) / (config.eval.suites if config.eval else "evals")
    if override is None and not folder.exists():
        return []
    return load_suites(folder)


def evaluate(config: TrainingConfig, model: Model, previous: Model | None = None, *, root: Path = Path("."),
             suites: list | None = None, judge: Model | None = None, lm_eval_model=None, lm_eval_tokenizer=None,
             concurrency: int = 8, progress: bool | None = None) -> dict:
    """Run what ``Eval:`` asks for (see the module doc). ``lm_eval_model``: the model object or folder
    lm-eval loads (None: the benchmarks are skipped, e.g. when the model is only behind an API)."""
    from oig.eval.run import run_eval

    section = config.eval
    suites = suites_of(config, root) if suites is None else suites
    lm_eval = None
    if section is not None and section.lm_eval is not None and section.lm_eval.tasks and lm_eval_model is not None:
        from oig.eval.lmeval import run_lm_eval

        def lm_eval():
            return run_lm_eval(lm_eval_model, section.lm_eval, tokenizer=lm_eval_tokenizer, root=Path(root))

    comparison = None
    if section is not None and section.judge is not None and section.comparison_suite and previous is not None:
        from oig.eval.compare import comparer
        from oig.eval.models import EvalError

        chosen = [s for s in suites if s.name == section.comparison_suite]
        if not chosen:
            raise EvalError(f"Eval.comparison_suite {section.comparison_suite!r} is not one of the suites "
                            f"({', '.join(s.name for s in suites) or 'none'})")
        comparison = comparer(chosen[0], section.judge, concurrency=concurrency)
    return run_eval(suites, model, previous=previous, judge=judge, concurrency=concurrency, progress=progress,
                    lm_eval=lm_eval, comparison=comparison)


def gate(config: TrainingConfig, results: dict, bugs_summary: dict | None = None) -> tuple[bool, list[str]]:
    """The release gate of training.yaml on these results (no ``Gate:`` section: passed)."""
    if config.gate is None:
        return True, []
    from oig.eval.gate import apply_gate

    return apply_gate(config.gate, results, bugs_summary)


def for_log(results: dict) -> dict:
    """The results as training_log keeps them: scores, intervals and deltas, not every answer."""

    def brief(entry: dict | None) -> dict | None:
        if entry is None:
            return None
        out = {k: v for k, v in entry.items() if k != "results"}
        if isinstance(out.get("previous"), dict):
            out["previous"] = brief(out["previous"])
        return out

    out = {**results, "suites": {name: brief(entry) for name, entry in (results.get("suites") or {}).items()}}
    comparison = out.get("comparison")
    if isinstance(comparison, dict):
        out["comparison"] = {k: v for k, v in comparison.items() if k != "pairs"}
    return out
