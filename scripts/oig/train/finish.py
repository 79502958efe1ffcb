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

    A failed publish still writes training_log, saying so, and leaves model.yaml as it was.
    """
    from oig.publish.publish import publish

    try:
        section = publish(Path(model_dir), mode=opts.publish, run=run, config=config, together=opts.together,
                          data_dir=Path(opts.data))
    except OigError as exc:
        run["published"] = {"mode": opts.publish, "error": str(exc)}
        try:
            runlog.write_training_log(opts.root, run)
        except runlog.RunLogError as log_exc:
            raise TrainError(f"{exc}; and {log_exc}") from None
        raise
    run["published"] = {"mode": opts.publish}
    if section is not None:
        ref = runlog.ModelRef.from_section(section)
        if ref.local_path is not None:  # relative to the repository root, wherever the command runs
            ref = replace(ref, local_path=display(model_dir, opts.root))
        section = run["model"] = ref.section()
    # Both files or neither: a full disk leaves the previous training_log and model.yaml as they were.
    runlog.write_run_files(opts.root, run, runlog.model_document(section, run) if section is not None else None)
    return run
