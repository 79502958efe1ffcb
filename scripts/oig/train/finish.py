"""The end of a run: the bug regression suite (its bugs loaded before training, so a bad list fails in
seconds), publishing (``oig.publish.publish``), then training_log and model.yaml, both or neither."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from oig import runlog
from oig.errors import OigError
from oig.train.context import TrainOptions
from oig.train.errors import TrainError
from oig.train.record import display

# --- the bug regression suite --------------------------------------------------------------------------------


def load_bugs(opts: TrainOptions) -> list | None:
    """The reported bugs to check after training (``oig.bugs.suite``), or None when no source was given."""
    if opts.bugs is None and not opts.bugs_repo:
        return None
    from oig.bugs.report import load_bugs as load

    return load(opts.bugs, opts.bugs_repo)


def bug_suite(bugs: list, model_dir: Path, root: Path) -> dict:
    """training_log's ``bugs`` and ``bugs_summary``: each bug's answer from the model model.yaml names
    (the one before this run; the reported answer when there is none) and from the model just trained."""
    from oig.bugs import suite as b

    ask_before = None
    if (Path(root) / runlog.MODEL_YAML).is_file():
        try:
            ask_before = b.model_asker(Path(root) / runlog.MODEL_YAML)
        except OigError as exc:  # a broken model.yaml must not cost the run: judge against the report
            print(f"oig train: warning: not asking the previous model: {exc}", file=sys.stderr)
    ask_after = b.section_asker(runlog.ModelRef(local_path=str(Path(model_dir).resolve())))
    return b.log_section(b.run_suite(bugs, ask_before, ask_after))


# --- publishing and the two files -----------------------------------------------------------------------------


def finish(run: dict, model_dir: Path, config, opts: TrainOptions) -> dict:
    """Publish, then write training_log and (when something was published) model.yaml.

    A failed publish still writes training_log, saying so, and leaves model.yaml as it was. A failed
    release gate (training_log's ``gate``) publishes nothing over the branch's model: a Hub run uploads
    the model to the branch ``candidate-<branch>`` instead, training_log says so, model.yaml stays, and
    the run ends with a TrainError; ``--override-gate`` publishes as usual and the override is recorded.
    """
    from oig.publish.publish import publish

    gate = run.get("gate") or {}
    held_back = gate.get("passed") is False and not gate.get("overridden")
    try:
        section = publish(Path(model_dir), mode=opts.publish, run=run, config=config,
                          together=opts.together and not held_back, data_dir=Path(opts.data), candidate=held_back)
    except OigError as exc:
        run["published"] = {"mode": opts.publish, "error": str(exc)}
        try:
            runlog.write_training_log(opts.results_dir, run)
        except runlog.RunLogError as log_exc:
            raise TrainError(f"{exc}; and {log_exc}") from None
        raise
    if held_back:
        run["published"] = {"mode": opts.publish, "held_back": "the release gate failed"}
        if section is not None and section.get("hub_repo"):
            run["published"]["candidate"] = {k: section[k] for k in ("hub_repo", "branch", "revision") if k in section}
        runlog.write_training_log(opts.results_dir, run)
        where = (f"; it is on the Hub branch {section['branch']} of {section['hub_repo']}"
                 if section is not None and section.get("hub_repo") else "")
        raise TrainError("the release gate failed, so the model was not published over the branch's model and "
                         f"model.yaml is unchanged{where}: " + "; ".join(gate.get("reasons") or ["no reason given"])
                         + ". A maintainer can publish it anyway with --override-gate (recorded in training_log)")
    run["published"] = {"mode": opts.publish}
    if section is not None:
        ref = runlog.ModelRef.from_section(section)
        if ref.local_path is not None:  # relative to model.yaml's folder, wherever the command runs
            ref = replace(ref, local_path=display(model_dir, opts.results_dir))
        section = run["model"] = ref.section()
    # Both files or neither: a full disk leaves the previous training_log and model.yaml as they were.
    runlog.write_run_files(opts.results_dir, run, runlog.model_document(section, run) if section is not None else None)
    return run
