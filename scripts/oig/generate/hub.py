"""A generated dataset on the Hugging Face Hub: parquet files, a dataset card, one commit.

``oig generate --push-to-hub ORG/NAME`` turns the run's exports into ``OUT/hub/`` (kept: it is
exactly what was uploaded) and uploads that folder to the dataset repository with huggingface_hub
(``create_repo(repo_type="dataset")``, ``upload_folder``); the commit sha the Hub returns is the
revision a linking slice pins.

- ``sft/``, ``prefs/``, ``battles/``, ``records/``: one config each (``load_dataset(repo, "prefs")``),
  split ``train``, parquet shards of at most ``ROWS_PER_SHARD`` rows (``train-00000-of-00002.parquet``),
  written in batches from the JSONL exports so memory stays flat. sft, prefs and battles keep their
  JSONL columns; a record keeps its id, prompt, reference and best answer as columns and the whole
  record as JSON text (``record``: its answers and verdicts vary in shape from one record to another).
- ``README.md``: the dataset card (``huggingface_hub.DatasetCard``): license, configs, the models and
  their settings, the aggregator, the judges, the prompts (instruction sources at their revisions,
  the judge and aggregator system prompts), the config's sha256 and the counts.

The token is ``HF_TOKEN`` (never written anywhere); the endpoint ``HF_ENDPOINT`` when set.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from oig.errors import OigError, redact, secret
from oig.files import backoff_delay, replace_folder
from oig.generate import export, judges
from oig.generate.config import GenerateConfig
from oig.generate.record import AGGREGATOR_SYSTEM

DEFAULT_ENDPOINT = "https://huggingface.co"
ROWS_PER_SHARD = 100_000
BATCH_ROWS = 2_000  # rows converted to arrow at a time
CONFIGS = ("sft", "prefs", "battles", "records")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
PUSH_TRIES = 4


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise OigError(f"--push-to-hub {repo_id!r} is not a Hub repo id; write it as ORG/NAME (letters, digits, "
                       "'-', '_', '.')")
    return repo_id


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def dataset_link(repo_id: str) -> str:
    """The dataset's link as a slice's ``HuggingFace:`` entry writes it."""
    return f"{endpoint()}/datasets/{repo_id}"


# --- parquet -----------------------------------------------------------------------------------------


def _schemas():
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    missing = pa.list_(pa.struct([("judge", pa.string()), ("response_id", pa.string()), ("model", pa.string())]))
    flags = [("verdicts_complete", pa.bool_()), ("missing_verdicts", missing)]
    return {
        "sft": pa.schema([("messages", message), *flags]),
        "prefs": pa.schema([("id", pa.string()), ("prompt", message), ("chosen", message), ("rejected", message),
                            ("chosen_model", pa.string()), ("rejected_model", pa.string()),
                            ("score_chosen", pa.float64()), ("score_rejected", pa.float64()),
                            ("policy", pa.string()), *flags]),
        "battles": pa.schema([("id", pa.string()), ("prompt", message), ("model_a", pa.string()),
                              ("model_b", pa.string()), ("winner", pa.string()), ("judge", pa.string()), *flags]),
        "records": pa.schema([("id", pa.string()), ("messages", message), ("reference", pa.string()),
                              ("best_model", pa.string()), ("best_score", pa.float64()), *flags,
                              ("record", pa.string())]),
    }


def _record_row(record: dict) -> dict:
    best = record.get("best") or {}
    return {"id": record["id"], "messages": record["messages"], "reference": record.get("reference"),
            "best_model": best.get("model"), "best_score": best.get("score"),
            "verdicts_complete": record["verdicts_complete"], "missing_verdicts": record["missing_verdicts"],
            "record": json.dumps(record, ensure_ascii=False, separators=(",", ":"))}


def write_parquet(out_dir: Path, folder: Path, lines: dict[str, int]) -> dict[str, list[str]]:
    """Each export as parquet shards under ``folder/<config>/``; returns config -> file names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = _schemas()
    written: dict[str, list[str]] = {}
    for config in CONFIGS:
        total = lines.get(f"{config}.jsonl", 0)
        shards = max(1, -(-total // ROWS_PER_SHARD))
        names = [f"{config}/train-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]
        (folder / config).mkdir(parents=True, exist_ok=True)
        rows = export.read_jsonl(out_dir / f"{config}.jsonl")
        if config == "records":
            rows = map(_record_row, rows)
        schema = schemas[config]
        for k, name in enumerate(names):
            with pq.ParquetWriter(folder / name, schema) as writer:
                left = min(ROWS_PER_SHARD, total - k * ROWS_PER_SHARD)
                while left > 0:
                    batch = [row for _, row in zip(range(min(BATCH_ROWS, left)), rows, strict=False)]
                    if not batch:
                        raise OigError(f"{out_dir / (config + '.jsonl')} has fewer rows than the run wrote; "
                                       "run `oig generate` again")
                    # Only the schema's columns, in its order; pyarrow checks every value's type.
                    writer.write_table(pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in batch],
                                                            schema=schema))
                    left -= len(batch)
        written[config] = names
    return written


# --- the dataset card --------------------------------------------------------------------------------


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def card_text(cfg: GenerateConfig, repo_id: str, *, sources: list[str], lines: dict[str, int],
              description: str) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        license=(cfg.license or "other").lower(), pretty_name=repo_id.split("/", 1)[1],
        size_categories=_size_category(lines.get("sft.jsonl", 0)), tags=["synthetic", "oig-generate"],
        configs=[{"config_name": c, "default": c == "sft",
                  "data_files": [{"split": "train", "path": f"{c}/*.parquet"}]} for c in CONFIGS])
    md = ["", f"# {repo_id}", "", description, "",
          "Made by `oig generate`: every model answered every instruction, judges scored the answers, and the "
          "best answer of each instruction is its SFT row. Configs: `sft` (prompt and best answer, the default), "
          "`prefs` (chosen/rejected pairs), `battles` (model_a, model_b, winner) and `records` (everything, "
          "with each record as JSON in `record`).", "",
          "## Provenance", "",
          f"- Licence: {cfg.license or 'not given (set `license` in the generate config)'}",
          f"- Generate config: `{cfg.path.name}`, sha256 `{cfg.sha256}`",
          f"- Rows: {lines.get('records.jsonl', 0)} records, {lines.get('sft.jsonl', 0)} SFT rows, "
          f"{lines.get('prefs.jsonl', 0)} preference pairs ({cfg.prefs_policy}, margin {cfg.prefs_margin:g}), "
          f"{lines.get('battles.jsonl', 0)} battles", "",
          "## Models", "", "| label | model | provider | settings |", "|---|---|---|---|"]
    every = [*cfg.models, *([cfg.aggregator] if cfg.aggregator else [])]
    for m in every:
        role = " (aggregator)" if m is cfg.aggregator else ""
        md.append(f"| {m.name}{role} | `{m.model}` | {m.provider} | `{json.dumps(m.settings, sort_keys=True)}` |")
    md += ["", "## Judges", ""]
    if not cfg.judges:
        md.append("No judges: no answer is scored.")
    for j in cfg.judges:
        detail = {"score": f"aspects {', '.join(j.aspects)}, 1 to {j.scale}", "reference": f"1 to {j.scale}",
                  "pairwise": "both orders", "reward_model": f"revision {j.revision or 'main'}"}[j.kind]
        md.append(f"- {j.name}: {j.kind}, `{j.model}` ({detail}), weight {j.weight:g}")
    md += ["", "## Prompts", "", "Instructions:", ""]
    md += [f"- {s}" for s in sources]
    md += ["", f"Judge system prompt (prompt version {judges.JUDGE_PROMPT_VERSION}):", "", "```text", judges.SYSTEM,
           "```"]
    if cfg.aggregator:
        md += ["", "Aggregator system prompt (followed by the numbered answers):", "", "```text", AGGREGATOR_SYSTEM,
               "```"]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(md) + "\n"))


# --- the upload ----------------------------------------------------------------------------------------


def build_folder(target: Path, out_dir: Path, card: str, lines: dict[str, int]) -> None:
    """``target``: the parquet configs and README.md, replaced whole."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        write_parquet(out_dir, tmp, lines)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    replace_folder(target, write)


def push(folder: Path, repo_id: str, *, private: bool | None, commit_message: str,
         sleep=time.sleep) -> str:
    """Create the dataset repo if needed, upload ``folder`` as one commit, return its sha. Transient
    failures (5xx, 429, connection errors) are retried with backoff; every step is idempotent."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    token = secret("HF_TOKEN", OigError, "--push-to-hub needs a write token")
    api = HfApi(endpoint=endpoint(), token=token)
    for attempt in range(PUSH_TRIES):
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                     commit_message=commit_message)
            oid = getattr(info, "oid", None)
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{40}", oid):
                raise OigError(f"the Hub accepted the upload to {repo_id} but returned no commit sha ({oid!r})")
            return oid
        except OigError:
            raise
        except OfflineModeIsEnabled:
            raise OigError("HF_HUB_OFFLINE is set, so no Hub call can be made; unset it to --push-to-hub") from None
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            transient = status is None or status == 429 or status >= 500
            if not transient or attempt == PUSH_TRIES - 1:
                why = f"HTTP {status}: " if status else ""
                raise OigError(redact(f"uploading the dataset to {repo_id} failed ({why}{_first_line(exc)})"
                                      + (f" after {PUSH_TRIES} tries" if transient else ""))) from None
            sleep(backoff_delay(attempt, base_s=2.0))
    raise AssertionError("unreachable")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def publish(cfg: GenerateConfig, out_dir: Path, repo_id: str, *, sources: list[str], lines: dict[str, int],
            description: str, private: bool | None) -> tuple[str, str]:
    """The run's exports as OUT/hub/, uploaded to the dataset ``repo_id``: (the dataset link, commit sha)."""
    folder = out_dir / "hub"
    build_folder(folder, out_dir, card_text(cfg, repo_id, sources=sources, lines=lines, description=description),
                 lines)
    sha = push(folder, repo_id, private=private,
               commit_message=f"oig generate: {lines.get('sft.jsonl', 0)} SFT rows (config sha256 {cfg.sha256[:12]})")
    return dataset_link(repo_id), sha
