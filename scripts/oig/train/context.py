"""What one ``oig train`` run is given (``TrainOptions``, from the command line) and what its steps share
(``RunContext``: the options, training.yaml, the run folder, the training_log being filled in, the
processes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oig.data.config import TrainingConfig
from oig.train import tiny
from oig.train.args import tiny_cpu_threads
from oig.train.record import display


@dataclass
class TrainOptions:
    config: Path = Path("training.yaml")
    data: Path = Path("data")
    base_model: str | None = None  # overrides training.yaml's base_model
    publish: str = "local"
    together: bool = False  # deploy on a Together endpoint after publishing to the Hub
    output: Path | None = None  # the run folder; default runs/<run_id>
    mixture: Path | None = None  # a folder `oig mix` wrote; default: mix into the run folder
    root: Path = Path(".")  # the repository root: git, evals/, paths in training_log
    results: Path | None = None  # where training_log and model.yaml go (--root); default the repository root
    allow_local_sources: bool = False
    allow_local_base_model: bool = False  # a folder as the base model (it may carry code and pickles)
    bugs: Path | None = None  # a bug list file for the regression suite (offline)
    bugs_repo: str | None = None  # or OWNER/NAME: its open issues labelled `bug`
    override_gate: bool = False  # publish even when training.yaml's Gate fails (recorded in training_log)

    @property
    def results_dir(self) -> Path:
        """The folder of training_log and model.yaml (the previous model is the model.yaml there)."""
        return Path(self.results) if self.results is not None else Path(self.root)


@dataclass
class RunContext:
    """One run's shared state, set up by the configuration step and read by every step after it."""

    opts: TrainOptions
    config: TrainingConfig
    base_model: str
    run_dir: Path
    log: dict  # training_log, filled in step by step
    started: float  # time.time() when the run began
    bugs: list | None = None  # the reported bugs to check after training; None: no suite
    state: Any = None  # accelerate's PartialState: one process, or one per GPU under `accelerate launch`
    on_gpu: bool = False

    @property
    def run_id(self) -> str:
        return self.log["run_id"]

    @property
    def tiny(self) -> bool:
        return self.base_model == tiny.NAME

    @property
    def threads(self) -> int | None:
        """torch's CPU thread count while training (None: torch's own)."""
        return tiny_cpu_threads(self.base_model, self.on_gpu)

    @property
    def mixture_dir(self) -> Path:
        return Path(self.opts.mixture) if self.opts.mixture else self.run_dir / "mixture"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    @property
    def sharded(self) -> bool:
        """Whether the weights are split across the GPUs (``distributed: fsdp`` or ``zero3``)."""
        return self.config.oig.get("distributed") in ("fsdp", "zero3")

    @property
    def is_local_main(self) -> bool:
        """Whether this process locks the run folder and builds its shared files first: the first on each
        machine (on several machines each has its own run folder)."""
        return self.state is None or self.state.is_local_main_process

    def shown(self, path: Path | None) -> str | None:
        """``path`` as training_log writes it: relative to the repository root when inside it."""
        return display(path, self.opts.root)
