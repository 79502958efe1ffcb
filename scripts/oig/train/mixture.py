"""The mixture a run trains on: built with ``oig mix`` into the run folder (or read from a folder it
wrote), checked record by record, and split into train and eval by distinct conversation."""

from __future__ import annotations

import json
import random
from pathlib import Path

from oig.train.context import TrainOptions
from oig.train.errors import TrainError

DEFAULT_EVAL_FRACTION = 0.1
MAX_DEFAULT_EVAL = 1000  # conversations; a larger held-out set only slows evaluation down


def build_mixture(opts: TrainOptions, out_dir: Path) -> Path:
    """``oig mix`` into ``out_dir``; the same inputs and seed give a byte-identical mixture."""
    from oig.data.mix import mix

    mix(opts.data, opts.config, out_dir, allow_local=opts.allow_local_sources)
    return out_dir


def read_mixture(mixture_dir: Path, allow_empty: bool = False) -> tuple[dict, list[dict]]:
    """The manifest and the records of a mixture folder (``{"slice", "messages"}`` lines)."""
    from oig.records import check_messages

    mixture_dir = Path(mixture_dir)
    try:
        manifest = json.loads((mixture_dir / "manifest.json").read_text(encoding="utf-8"))
        lines = (mixture_dir / "mixture.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise TrainError(f"{mixture_dir} is not a mixture folder: {Path(exc.filename).name} is missing "
                         "(build one with `oig mix --out DIR`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainError(f"cannot read the mixture in {mixture_dir}: {exc}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{mixture_dir / 'mixture.jsonl'}:{n}: not JSON ({exc.msg})") from None
        problem = check_messages(record.get("messages") if isinstance(record, dict) else None)
        if problem:
            raise TrainError(f"{mixture_dir / 'mixture.jsonl'}:{n}: {problem}")
        records.append(record)
    if not records and not allow_empty:
        raise TrainError(f"the mixture in {mixture_dir} is empty: add slices to data/ or check the Mixture weights")
    return manifest, records


def _key(record: dict) -> str:
    return json.dumps(record["messages"], sort_keys=True, ensure_ascii=False)


def split_eval(records: list[dict], eval_size: float | None, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out distinct conversations: a repeated example never sits on both sides.

    ``eval_size`` is a count (>= 1) or a fraction (< 1) of the distinct conversations. Unset: 10%,
    at most 1000, and none at all below 10 conversations (too few to spare).
    """
    keys = list(dict.fromkeys(_key(r) for r in records))
    n = len(keys)
    if eval_size is None:
        k = min(max(1, round(DEFAULT_EVAL_FRACTION * n)), MAX_DEFAULT_EVAL) if n >= 10 else 0
    elif eval_size < 1:
        k = max(1, round(eval_size * n))
    elif float(eval_size).is_integer():
        k = int(eval_size)
    else:
        raise TrainError(f"eval_size {eval_size} is neither a whole count nor a fraction below 1")
    if k >= n:
        raise TrainError(f"eval_size {eval_size} holds out {k} of {n} distinct conversations, leaving "
                         "none to train on; make it smaller")
    held = set(random.Random(seed).sample(keys, k))
    train_records = [r for r in records if _key(r) not in held]
    eval_records, seen = [], set()
    for r in records:
        key = _key(r)
        if key in held and key not in seen:
            seen.add(key)
            eval_records.append(r)
    return train_records, eval_records
