"""What one ``oig train`` run is given (``TrainOptions``, from the command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainOptions:
    config: Path = Path("training.yaml")
    data: Path = Path("data")
    base_model: str | None = None  # overrides training.yaml's base_model
    publish: str = "local"
    together: bool = False  # deploy on a Together endpoint after publishing to the Hub
    output: Path | None = None  # the run folder; default runs/<run_id>
    mixture: Path | None = None  # a folder `oig mix` wrote; default: mix into the run folder
    root: Path = Path(".")  # where training_log and model.yaml go
    allow_local_sources: bool = False
    allow_local_base_model: bool = False  # a folder as the base model (it may carry code and pickles)
    bugs: Path | None = None  # a bug list file for the regression suite (offline)
    bugs_repo: str | None = None  # or OWNER/NAME: its open issues labelled `bug`
