"""The mixture a run trains on: built with ``oig mix`` into the run folder (or read from a folder it
wrote), checked record by record. The held-out split is ``oig mix``'s (``oig.data.split``): the run
trains on ``mixture.jsonl`` and evaluates on ``eval.jsonl``, and never splits anything itself."""

from __future__ import annotations

import json
from pathlib import Path

from oig.train.context import TrainOptions
from oig.train.errors import TrainError

EVAL_FILE = "eval.jsonl"
MAX_LOGGED_HELD_OUT = 200  # held-out examples listed in training_log; more: it points at the manifest's list


def build_mixture(opts: TrainOptions, out_dir: Path) -> Path:
    """``oig mix`` into ``out_dir``; the same inputs and seed give a byte-identical mixture."""
    from oig.data.mix import mix

    mix(opts.data, opts.config, out_dir, allow_local=opts.allow_local_sources)
    return out_dir


def read_mixture(mixture_dir: Path, allow_empty: bool = False) -> tuple[dict, list[dict]]:
    """The manifest and the records of a mixture folder (``{"slice", "messages"}`` lines)."""
    mixture_dir = Path(mixture_dir)
    try:
        manifest = json.loads((mixture_dir / "manifest.json").read_text(encoding="utf-8"))
        records = _records(mixture_dir / "mixture.jsonl")
    except FileNotFoundError as exc:
        raise TrainError(f"{mixture_dir} is not a mixture folder: {Path(exc.filename).name} is missing "
                         "(build one with `oig mix --out DIR`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainError(f"cannot read the mixture in {mixture_dir}: {exc}") from None
    if not records and not allow_empty:
        raise TrainError(f"the mixture in {mixture_dir} is empty: add slices to data/ or check the Mixture weights")
    return manifest, records


def read_eval(mixture_dir: Path) -> list[dict]:
    """The held-out examples ``oig mix`` wrote beside the mixture (none for a folder without eval.jsonl)."""
    path = Path(mixture_dir) / EVAL_FILE
    if not path.exists():
        return []
    try:
        return _records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainError(f"cannot read the held-out examples in {path}: {exc}") from None


def held_out_log(manifest: dict, manifest_path: str) -> list[dict] | dict:
    """training_log's list of held-out examples ({slice, index}), or where the list is when it is long."""
    examples = (manifest.get("eval") or {}).get("examples") or []
    if len(examples) <= MAX_LOGGED_HELD_OUT:
        return [{"slice": e["slice"], "index": e["index"]} for e in examples]
    return {"count": len(examples), "listed_in": f"{manifest_path} (eval.examples)"}


def _records(path: Path) -> list[dict]:
    from oig.records import check_messages

    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path}:{n}: not JSON ({exc.msg})") from None
        problem = check_messages(record.get("messages") if isinstance(record, dict) else None)
        if problem:
            raise TrainError(f"{path}:{n}: {problem}")
        records.append(record)
    return records
