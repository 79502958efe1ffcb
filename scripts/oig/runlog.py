"""``training_log`` and ``model.yaml``: the two files ``oig train`` leaves at the repository root.

One cohesive module, past 400 lines: model.yaml's schema, the typed forms that mirror it and the code
that reads and writes both files change together (a key added to the schema is typed and written back
in the same edit), so they stay in one place.

``training_log`` is the record of the last run, YAML that people read in a diff and programs read
back (the model card, the bug report workflow): run id, time, git commit, base model, resolved
hyperparameters, the mixture manifest, loss and eval loss over steps, tokens per second, hardware,
duration and where the model went.

``model.yaml`` says where the current model is: a local path, or a Hub repo with its commit revision
and branch, plus the Together model, endpoint and base URL when it is deployed. Its shape is
``MODEL_SCHEMA`` (shipped as ``schemas/model.schema.json``; ``python -m oig.runlog`` rewrites it). It
is written only after publishing succeeded, so it never names a model that does not exist.

Both are written atomically: a temp file beside the target, then ``os.replace``; when both are
written, both temp files are complete before either is renamed. A full disk or a read-only folder is
a RunLogError naming the path and the cause, and leaves the files as they were.

Readers take them typed: :class:`RunLog` (training_log) and :class:`ModelRef` (model.yaml, or the
``model`` section publishing returns and training_log keeps), with :class:`TogetherRef` for the
deployment. ``from_dict(doc).to_dict() == doc``, keys in the order read, so a file read and written
back is the same file; ``read_run_log`` / ``read_model_ref`` give the typed form of a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cache
from pathlib import Path

import yaml

from oig import files, yamlsafe
from oig.errors import OigError

TRAINING_LOG = "training_log"
MODEL_YAML = "model.yaml"

TRAINING_LOG_HEADER = (
    "# The record of the last training run, written by `oig train`; do not edit.\n"
    "# Hyperparameters, the mixture manifest, loss over steps, speed, hardware and where the model went.\n"
)
MODEL_YAML_HEADER = (
    "# yaml-language-server: $schema=schemas/model.schema.json\n"
    "# Where the current model is, written by `oig train` after publishing; read by `oig query` and\n"
    "# `oig serve`. Do not edit.\n"
)

_text = {"type": "string", "minLength": 1}
MODEL_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:oig:schema:model",
    "title": "oig model.yaml",
    "description": "Where the model trained by `oig train` is, what it was trained from and when. Written "
    "by `oig train` only after the model was published; read by `oig query` and `oig serve`.",
    "type": "object",
    "additionalProperties": False,
    "required": ["base_model", "trained_at"],
    # Hosted fine-tuning on Together leaves a model that exists only there: no weights to point at.
    "anyOf": [{"required": ["model"]}, {"required": ["together"]}],
    "properties": {
        "model": {
            "description": "Where the weights are: a local folder, or a Hugging Face Hub repo at a commit.",
            "type": "object",
            "additionalProperties": False,
            "anyOf": [{"required": ["local_path"]}, {"required": ["hub_repo", "revision"]}],
            "properties": {
                "local_path": {**_text, "description": "A folder, relative to the repository root "
                               "when it lies inside it, that `from_pretrained` loads."},
                "hub_repo": {**_text, "description": "The Hub model repo id (ORG/NAME)."},
                "revision": {**_text, "description": "The Hub commit sha of the upload."},
                "branch": {**_text, "description": "The Hub branch the model was uploaded to (named "
                           "after the git branch, so a specialisation branch never overwrites main)."},
                "endpoint": {**_text, "description": "The Hub endpoint URL, when not the public Hub."},
            },
        },
        "together": {
            "description": "The Together AI deployment, when there is one.",
            "type": "object",
            "additionalProperties": False,
            "required": ["model"],
            "properties": {
                "model": {**_text, "description": "The model name registered on Together."},
                "endpoint": {**_text, "description": "The dedicated endpoint's name."},
                "endpoint_id": {**_text, "description": "The dedicated endpoint's id."},
                "base_url": {**_text, "description": "The API base URL, without /v1."},
            },
        },
        "base_model": {**_text, "description": "The model that was fine-tuned: a Hub id, a path, or `tiny`."},
        "commit": {
            "type": ["string", "null"],
            "description": "The git commit of this repository the model was trained from (null outside git).",
        },
        "branch": {"type": ["string", "null"], "description": "The git branch it was trained on."},
        "run_id": {**_text, "description": "The training run, as named in training_log."},
        "trained_at": {**_text, "description": "When training finished (ISO 8601, UTC)."},
    },
}


class RunLogError(OigError):
    """training_log or model.yaml is missing, unreadable or not in the expected shape."""


# --- the typed forms ----------------------------------------------------------------------------------

_WEIGHT_KEYS = tuple(MODEL_SCHEMA["properties"]["model"]["properties"])  # local_path, hub_repo, revision, ...
_TOGETHER_KEYS = tuple(MODEL_SCHEMA["properties"]["together"]["properties"])  # model, endpoint, endpoint_id, base_url
_DOC_KEYS = tuple(MODEL_SCHEMA["properties"])  # model, together, base_model, commit, branch, run_id, trained_at
_KEPT = {"repr": False, "compare": False}  # the keys as read: their order, and which were there (None too)


def _emit(values: dict[str, object], keys: tuple[str, ...]) -> dict:
    """``values`` as a document: the keys read first, in that order, then the other values that are set."""
    out = {k: values[k] for k in keys if k in values}
    out.update((k, v) for k, v in values.items() if k not in out and v is not None)
    return out


def _mapping(doc: object, known: tuple[str, ...], where: object) -> dict:
    if not isinstance(doc, dict):
        raise RunLogError(f"{where} is not a mapping")
    unknown = [str(k) for k in doc if k not in known]
    if unknown:
        raise RunLogError(f"{where} has unknown key(s) {', '.join(unknown)} (valid: {', '.join(known)})")
    return doc


@dataclass(frozen=True)
class TogetherRef:
    """model.yaml's ``together``: the model registered on Together and, once deployed, its endpoint."""

    model: str
    endpoint: str | None = None  # the dedicated endpoint's name
    endpoint_id: str | None = None
    base_url: str | None = None  # the API root without /v1; None: Together's (or TOGETHER_BASE_URL)
    keys: tuple[str, ...] = field(default=(), **_KEPT)

    @property
    def name(self) -> str:
        """The name to ask for: the dedicated endpoint, else the model."""
        return self.endpoint or self.model

    @classmethod
    def from_dict(cls, doc: object, where: str = "together") -> TogetherRef:
        doc = _mapping(doc, _TOGETHER_KEYS, where)
        if not isinstance(doc.get("model"), str) or not doc["model"]:
            raise RunLogError(f"{where} has no model")
        return cls(**{k: doc.get(k) for k in _TOGETHER_KEYS}, keys=tuple(doc))

    def to_dict(self) -> dict:
        return _emit({k: getattr(self, k) for k in _TOGETHER_KEYS}, self.keys)


@dataclass(frozen=True)
class ModelRef:
    """Where a model is and what it came from: model.yaml (``from_dict``), or publishing's ``model``
    section as training_log keeps it, ``together`` inside (``from_section``)."""

    local_path: str | None = None  # relative to model.yaml's folder (the repository root) unless absolute
    hub_repo: str | None = None  # ORG/NAME on the Hub
    revision: str | None = None  # the Hub commit of the upload
    branch: str | None = None  # the Hub branch
    endpoint: str | None = None  # the Hub endpoint URL, when not the public Hub
    together: TogetherRef | None = None
    base_model: str | None = None
    commit: str | None = None  # the git commit trained from
    git_branch: str | None = None  # the git branch trained on (model.yaml's top-level `branch`)
    run_id: str | None = None
    trained_at: str | None = None
    keys: tuple[str, ...] = field(default=(), **_KEPT)  # model.yaml's top-level keys as read
    section_keys: tuple[str, ...] = field(default=(), **_KEPT)  # the model section's keys as read

    @property
    def hub_revision(self) -> str | None:
        """The revision to load from the Hub: the recorded commit, else the branch."""
        return self.revision or self.branch

    @classmethod
    def from_section(cls, section: object, where: str = "model") -> ModelRef:
        section = _mapping(section, (*_WEIGHT_KEYS, "together"), where)
        together = section.get("together")
        return cls(**{k: section.get(k) for k in _WEIGHT_KEYS}, section_keys=tuple(section),
                   together=TogetherRef.from_dict(together, f"{where}.together") if together is not None else None)

    @classmethod
    def from_dict(cls, doc: object, where: str = MODEL_YAML) -> ModelRef:
        """From model.yaml's document (``read_model_yaml`` checks it against MODEL_SCHEMA first)."""
        doc = _mapping(doc, _DOC_KEYS, where)
        together = doc.get("together")
        return replace(cls.from_section(doc.get("model") or {}, f"{where}: model"),
                       together=TogetherRef.from_dict(together, f"{where}: together") if together else None,
                       base_model=doc.get("base_model"), commit=doc.get("commit"), git_branch=doc.get("branch"),
                       run_id=doc.get("run_id"), trained_at=doc.get("trained_at"), keys=tuple(doc))

    def section(self) -> dict:
        """Publishing's form (what ``from_section`` reads)."""
        together = self.together.to_dict() if self.together else None
        return _emit({**{k: getattr(self, k) for k in _WEIGHT_KEYS}, "together": together}, self.section_keys)

    def to_dict(self) -> dict:
        """model.yaml's document (what ``from_dict`` reads)."""
        weights = _emit({k: getattr(self, k) for k in _WEIGHT_KEYS}, self.section_keys)
        return _emit({"model": weights or None, "together": self.together.to_dict() if self.together else None,
                      "base_model": self.base_model, "commit": self.commit, "branch": self.git_branch,
                      "run_id": self.run_id, "trained_at": self.trained_at}, self.keys)


_RUN_FIELDS = ("run_id", "started_at", "finished_at", "git_commit", "git_branch", "base_model", "steps",
               "train_loss", "eval_loss", "tokens_per_second", "duration_s", "metrics", "model", "bugs",
               "bugs_summary")


@dataclass
class RunLog:
    """training_log: the keys its readers use, typed; every other key (mixture, hyperparameters,
    hardware, published, ...) in ``extra`` as read. Values are taken as they are, not converted."""

    run_id: str
    base_model: str
    started_at: str | None = None  # ISO 8601, UTC
    finished_at: str | None = None
    git_commit: str | None = None
    git_branch: str | None = None
    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    duration_s: float | None = None
    metrics: list[dict] | None = None  # one row per logged step: step, loss, eval_loss, learning_rate, ...
    model: ModelRef | None = None  # where the model went (publishing's section)
    bugs: list[dict] | None = None  # the bug suite's records (oig.bugs.suite.run_suite)
    bugs_summary: dict | None = None
    extra: dict = field(default_factory=dict)
    keys: tuple[str, ...] = field(default=(), **_KEPT)

    @classmethod
    def from_dict(cls, doc: object, where: object = TRAINING_LOG) -> RunLog:
        doc = _run_doc(doc, where)
        values = {k: doc[k] for k in _RUN_FIELDS if k in doc}
        if doc.get("model") is not None:
            values["model"] = ModelRef.from_section(doc["model"], f"{where}: model")
        return cls(**values, extra={k: v for k, v in doc.items() if k not in _RUN_FIELDS}, keys=tuple(doc))

    def to_dict(self) -> dict:
        values = {k: getattr(self, k) for k in _RUN_FIELDS}
        values["model"] = self.model.section() if self.model is not None else None
        return _emit({**values, **self.extra}, self.keys)


def _run_doc(doc: object, where: object) -> dict:
    if not isinstance(doc, dict):
        raise RunLogError(f"{where} is not a training_log (expected a mapping)")
    for key in ("run_id", "base_model"):
        if key not in doc:
            raise RunLogError(f"{where} is not a training_log: it has no {key}")
    return doc


def _as_dict(doc: dict | RunLog | ModelRef) -> dict:
    return doc.to_dict() if isinstance(doc, RunLog | ModelRef) else doc


# --- writing ----------------------------------------------------------------------------------------


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Block style, keys in the order given; long strings are left on one line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML quotes by YAML 1.1 rules; the files are read back by YAML 1.2 rules (oig.yamlsafe), where a
    # plain 1e3 is a number. Quote every string that would not read back as the same string.
    if yamlsafe._resolve_plain(value) is not value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _represent_str)


def _plain(value: object) -> object:
    """Data ``yaml.safe_dump`` can write: tuples become lists, paths strings, numpy scalars numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, Enum):  # SFTConfig holds a few
        return _plain(value.value)
    # Exact types: subclasses (torch's version string, numpy scalars) have no YAML representer.
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if value is None:
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def dump_yaml(data: dict, header: str = "") -> str:
    return header + yaml.dump(_plain(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                              default_flow_style=False, width=1_000_000)


def _write(targets: list[tuple[Path, str]]) -> None:
    """Both or neither (``files.write_all_atomic``); a failure is a RunLogError naming the path."""
    try:
        files.write_all_atomic(targets)
    except files.WriteError as exc:
        raise RunLogError(str(exc)) from None


def write_training_log(root: Path, run: dict | RunLog) -> Path:
    path = Path(root) / TRAINING_LOG
    _write([(path, dump_yaml(_as_dict(run), TRAINING_LOG_HEADER))])
    return path


def write_run_files(root: Path, run: dict | RunLog, model_doc: dict | ModelRef | None = None) -> None:
    """training_log, and model.yaml when ``model_doc`` is given (checked against MODEL_SCHEMA first),
    both or neither: the two temp files are written in full before either replaces its file."""
    targets = [(Path(root) / TRAINING_LOG, dump_yaml(_as_dict(run), TRAINING_LOG_HEADER))]
    if model_doc is not None:
        targets.append((Path(root) / MODEL_YAML, dump_yaml(_checked_model_doc(model_doc), MODEL_YAML_HEADER)))
    _write(targets)


def model_document(model: dict, run: dict) -> dict:
    """model.yaml's content from publishing's ``model`` section and the training_log dict.

    A ``together`` entry inside the model section (publishing returns it there) moves up beside it.
    """
    model = dict(model)
    together = model.pop("together", None)
    doc: dict = {"model": model} if model else {}
    if together:
        doc["together"] = {k: v for k, v in together.items() if v is not None}
    doc["base_model"] = run["base_model"]
    doc["commit"] = run.get("git_commit")
    doc["branch"] = run.get("git_branch")
    doc["run_id"] = run["run_id"]
    doc["trained_at"] = run.get("finished_at") or run["started_at"]
    return doc


def write_model_yaml(root: Path, doc: dict | ModelRef) -> Path:
    """Check ``doc`` against MODEL_SCHEMA, then write model.yaml atomically."""
    path = Path(root) / MODEL_YAML
    _write([(path, dump_yaml(_checked_model_doc(doc), MODEL_YAML_HEADER))])
    return path


def _checked_model_doc(doc: dict | ModelRef) -> object:
    doc = _plain(_as_dict(doc))
    problem = model_yaml_problem(doc)
    if problem:
        raise RunLogError(f"refusing to write {MODEL_YAML}: {problem}")
    return doc


# --- reading ----------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> dict:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunLogError(f"{path} does not exist; run `oig train` first") from None
    except OSError as exc:
        raise RunLogError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = yamlsafe.load(yamlsafe.decode(data))
    except yamlsafe.YamlError as exc:
        raise RunLogError(f"{path}:{exc.line}:{exc.col}: {exc.message}") from None
    if not isinstance(doc, dict):
        raise RunLogError(f"{path} is not a {what} (expected a mapping)")
    return doc


@cache
def _model_validator():
    import jsonschema_rs

    return jsonschema_rs.validator_for(MODEL_SCHEMA)


def model_yaml_problem(doc: object) -> str | None:
    """Why ``doc`` is not a valid model.yaml, or None."""
    errors = sorted(_model_validator().iter_errors(doc), key=lambda e: list(e.instance_path))
    if not errors:
        return None
    err = errors[0]
    where = "/".join(str(p) for p in err.instance_path) or "the top level"
    return f"{where}: {err.message}"


def read_model_yaml(path: Path = Path(MODEL_YAML)) -> dict:
    """model.yaml, checked against MODEL_SCHEMA. Raises RunLogError with the reason."""
    doc = _read(path, "model.yaml")
    problem = model_yaml_problem(doc)
    if problem:
        raise RunLogError(f"{path} is not a valid model.yaml: {problem}")
    return doc


def read_training_log(path: Path = Path(TRAINING_LOG)) -> dict:
    """training_log as a mapping (``read_run_log``: as a RunLog)."""
    return _run_doc(_read(path, "training_log"), path)


def read_model_ref(path: Path = Path(MODEL_YAML)) -> ModelRef:
    """model.yaml, checked against MODEL_SCHEMA, as a ModelRef."""
    return ModelRef.from_dict(read_model_yaml(path), str(path))


def read_run_log(path: Path = Path(TRAINING_LOG)) -> RunLog:
    """training_log as a RunLog (its ``model`` section must be publishing's shape)."""
    return RunLog.from_dict(read_training_log(path), str(path))


# --- the shipped schema file --------------------------------------------------------------------------

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "model.schema.json"


def rendered_schema() -> str:
    return json.dumps(MODEL_SCHEMA, indent=2) + "\n"


def main() -> None:
    _write([(SCHEMA_FILE, rendered_schema())])
    print(f"wrote schemas/{SCHEMA_FILE.name}")


if __name__ == "__main__":
    main()
