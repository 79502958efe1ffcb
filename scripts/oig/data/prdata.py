"""What a pull request may change for a training run on its data (the `train` workflow's `pr` input).

The GPU runner holds the maintainers' secrets, so a pull request run takes from the pull request only
what a data contributor may change:

- its slices: regular ``*.yaml`` files at the top of ``data/`` (``README.md`` and ``LICENSE`` are
  ignored; nothing hidden, no folders, no links, nothing else);
- the ``Mixture`` and ``MixtureTotal`` sections of its training.yaml.

Everything else in training.yaml (base_model, hub_repo, backend, method, model_init_kwargs, every
SFTConfig field, and the Eval and Gate sections: how the model is measured and what a release must pass)
comes from the branch being trained. A pull request that changes any of it is refused with one error
listing the keys; a maintainer who wants them merges it and trains the branch.

``apply_pull_request`` checks a folder holding the pull request's ``data/`` and (optionally)
``training.yaml``, fetched as files, and on success replaces this checkout's ``data/`` and writes a
training.yaml made of the branch's Training section and the pull request's mixture.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from oig import yamlsafe
from oig.data.config import parse_training_config
from oig.data.schemas import ALIASES
from oig.data.validate import IGNORED_IN_DATA, SLICE_NAME, TRAINING_FILE
from oig.errors import InvalidInput, Problem

PR_SECTIONS = ("Mixture", "MixtureTotal")  # what a pull request may change in training.yaml
HEADER = (
    "# training.yaml for a run on a pull request's data: Training, Eval and Gate are the branch's own, the\n"
    "# Mixture and MixtureTotal are the pull request's (oig pr-data).\n"
)


def _lstat_regular(path: Path, display: str) -> Problem | None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return Problem(display, 0, 0, "error", f"cannot read: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return Problem(display, 0, 0, "error", "symbolic links are not allowed in a pull request's data")
    if stat.S_ISDIR(st.st_mode):
        return Problem(display, 0, 0, "error", "folders are not allowed in data/: a slice is one file, data/<name>.yaml")
    if not stat.S_ISREG(st.st_mode):
        return Problem(display, 0, 0, "error", "not a regular file")
    if st.st_size > yamlsafe.MAX_BYTES:
        return Problem(display, 0, 0, "error", f"file is {st.st_size:,} bytes; the limit is {yamlsafe.MAX_BYTES:,}")
    return None


def pr_slice_files(pr_dir: Path) -> tuple[list[Path], list[Problem]]:
    """The pull request's slice files, and a problem for anything else under its data/."""
    data = Path(pr_dir) / "data"
    if not data.is_dir() or data.is_symlink():
        return [], [Problem("data", 0, 0, "error", "the pull request has no data/ folder")]
    files, problems = [], []
    for entry in sorted(data.iterdir()):
        display = f"data/{entry.name}"
        if entry.name in IGNORED_IN_DATA and not entry.is_symlink() and entry.is_file():
            continue
        if entry.name.startswith("."):
            problems.append(Problem(display, 0, 0, "error", "hidden files and folders are not allowed in data/"))
            continue
        found = _lstat_regular(entry, display)
        if found:
            problems.append(found)
        elif entry.suffix != ".yaml" or not SLICE_NAME.fullmatch(entry.stem):
            problems.append(Problem(display, 0, 0, "error", "only slice files (data/<name>.yaml) are taken from a "
                                    "pull request"))
        else:
            files.append(entry)
    return files, problems


def _items(section: object) -> list[tuple[str, object]]:
    """A section's (key, value) pairs: a mapping, or the seed's list of one-key mappings."""
    if isinstance(section, dict):
        return [(str(k), v) for k, v in section.items()]
    if isinstance(section, list):
        return [(str(k), v) for item in section if isinstance(item, dict) and len(item) == 1 for k, v in item.items()]
    return []


def _settings_view(data: bytes | None) -> dict[str, object]:
    """Every setting outside the pull request's sections, as written: Training's by their full names
    (aliases resolved), every other section's as ``Section.key`` (``Eval.judge``, ``Gate.max_drop``).

    Read from the YAML itself, not from a checked config, so that a pull request whose training.yaml
    also has errors still gets the list of what it changes.
    """
    if data is None:
        return {}
    try:
        doc = yamlsafe.load(yamlsafe.decode(data))
    except yamlsafe.YamlError:
        return {}  # parse_training_config reports it, with its line
    if not isinstance(doc, dict):
        return {}
    view: dict[str, object] = {}
    for section, value in doc.items():
        if section in PR_SECTIONS or value is None:
            continue
        if section == "Training":
            view.update({ALIASES.get(k, k): v for k, v in _items(value)})
        elif isinstance(value, dict | list) and _items(value):
            view.update({f"{section}.{k}": v for k, v in _items(value)})
        else:
            view[str(section)] = value
    return view


def changed_settings(base_bytes: bytes | None, pr_bytes: bytes, pr_display: str) -> tuple[list[str], list[Problem]]:
    """The settings outside Mixture and MixtureTotal that the pull request's training.yaml changes, and
    the problems it has."""
    _, problems = parse_training_config(pr_bytes, Path(TRAINING_FILE), pr_display)
    base, pr = _settings_view(base_bytes), _settings_view(pr_bytes)
    changed = sorted(k for k in base.keys() | pr.keys() if base.get(k, _MISSING) != pr.get(k, _MISSING))
    return changed, problems


_MISSING = object()


def _merged_training_yaml(base_doc: dict, pr_doc: dict) -> str:
    import yaml

    doc = {k: v for k, v in base_doc.items() if k not in PR_SECTIONS and v is not None}  # Training, Eval, Gate
    for section in PR_SECTIONS:
        if pr_doc.get(section) is not None:
            doc[section] = pr_doc[section]
    return HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


def apply_pull_request(pr_dir: Path, root: Path = Path(".")) -> list[Problem]:
    """Check the pull request's files in ``pr_dir`` and take them into ``root``.

    Raises InvalidInput listing every problem (nothing in ``root`` changes then); returns warnings.
    """
    pr_dir, root = Path(pr_dir), Path(root)
    files, problems = pr_slice_files(pr_dir)
    base_path, pr_path = root / TRAINING_FILE, pr_dir / TRAINING_FILE
    base_bytes = base_path.read_bytes() if base_path.is_file() else None
    pr_bytes = None
    if os.path.lexists(pr_path):
        found = _lstat_regular(pr_path, f"{TRAINING_FILE} (pull request)")
        if found:
            problems.append(found)
        else:
            pr_bytes = pr_path.read_bytes()
    if pr_bytes is not None:
        changed, found = changed_settings(base_bytes, pr_bytes, f"{TRAINING_FILE} (pull request)")
        problems += found
        if changed:
            problems.append(Problem(f"{TRAINING_FILE} (pull request)", 1, 1, "error",
                                    "a pull request run takes only Mixture and MixtureTotal from the pull request's "
                                    f"training.yaml, and this one changes: {', '.join(changed)}. Those settings come "
                                    "from the branch being trained: revert them here, or merge the pull request "
                                    "and train its branch"))
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)

    # --- take the files: data/ replaced as a whole, training.yaml written atomically ------------------
    from oig.files import replace_folder, write_atomic

    def copy_slices(staging: Path) -> None:
        staging.mkdir()
        for path in files:
            with open(path, "rb") as src:
                (staging / path.name).write_bytes(src.read(yamlsafe.MAX_BYTES + 1))

    if pr_bytes is not None:
        base_doc = yamlsafe.load(yamlsafe.decode(base_bytes)) if base_bytes is not None else {}
        pr_doc = yamlsafe.load(yamlsafe.decode(pr_bytes)) or {}
        write_atomic(base_path, _merged_training_yaml(base_doc or {}, pr_doc))
    replace_folder(root / "data", copy_slices, hidden=True)
    return problems
