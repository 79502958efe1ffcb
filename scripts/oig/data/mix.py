"""``oig mix``: slices and training.yaml in, one weighted mixture (``mixture.jsonl`` and its manifest) out.

The stage reads as its pipeline: load and check the slices and training.yaml, materialize each slice
as JSONL, hold out each slice's share of eval_size (``oig.data.split``: distinct examples, before any
upsampling), decide how many of the rest each gets (``oig.data.allocation``, where the written meaning of
Mixture weights lives), then stream the mixture file (``oig.data.mixwriter``: selection, order and
the manifest). The table of shares that ``oig mix --plan`` and the PR summary show is here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from oig.data.allocation import Allocation, allocate
from oig.data.mixwriter import plan, write_mixture

# --- the table ------------------------------------------------------------------------------------

COLUMNS = ("slice", "available", "eval", "weight", "share", "count", "epochs")  # available: left for training


def table_rows(allocation: Allocation) -> list[tuple[str, ...]]:
    """One row of text cells per slice, then the total."""
    rows = [(s.name, f"{s.available:,}", f"{s.held_out:,}", "-" if s.weight is None else f"{s.weight:g}", f"{s.share:.1%}",
             f"{s.count:,}", f"{s.epochs:.2f}") for s in allocation.slices]
    available = sum(s.available for s in allocation.slices)
    epochs = allocation.total / available if available else 0.0
    share = sum(s.share for s in allocation.slices)
    held_out = sum(s.held_out for s in allocation.slices)
    rows.append(("total", f"{available:,}", f"{held_out:,}", "", f"{share:.1%}", f"{allocation.total:,}", f"{epochs:.2f}"))
    return rows


def render_text(allocation: Allocation) -> str:
    rows = [COLUMNS, *table_rows(allocation)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _md(cell: str) -> str:
    return cell.replace("|", "\\|").replace("`", "'")


def render_markdown(allocation: Allocation, title: str = "oig mix") -> str:
    """A GitHub-flavoured Markdown table, as the PR workflow shows it in the step summary."""
    lines = [f"### {title}: {allocation.total:,} examples\n", "| " + " | ".join(COLUMNS) + " |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    rows = table_rows(allocation)
    for r in rows[:-1]:
        lines.append("| " + " | ".join(_md(c) for c in r) + " |")
    lines.append("| " + " | ".join(f"**{c}**" if c else "" for c in rows[-1]) + " |")
    if allocation.warnings:
        lines.append("")
        lines += [f"- ⚠️ {_md(w)}" for w in allocation.warnings]
    return "\n".join(lines) + "\n"


# --- the stage --------------------------------------------------------------------------------------


@dataclass
class MixResult:
    allocation: Allocation
    manifest: dict  # the manifest written, or the plan (no mixture sha256) with plan_only
    out_dir: Path | None


def mix(data_dir: Path, config_path: Path, out_dir: Path | None, *, total: int | None = None,
        seed: int | None = None, allow_local: bool = False, plan_only: bool = False) -> MixResult:
    """``oig mix``: slices and training.yaml in, mixture.jsonl and manifest.json out."""
    from oig.data.config import load_training_config
    from oig.data.fetch import SourceOptions
    from oig.data.sources import materialize, materialize_preferences
    from oig.data.split import hold_out, no_split
    from oig.data.validate import ValidateOptions, load_slices

    data_dir, config_path = Path(data_dir), Path(config_path)
    base_dir = data_dir.parent  # relative links in slice files are relative to the repository root
    # --- the slices and the configuration ---------------------------------------------------------
    slices = load_slices(data_dir, ValidateOptions(allow_local=allow_local, base_dir=base_dir))
    config = load_training_config(config_path, slice_names={s.name for s in slices})
    seed = config.seed if seed is None else seed
    # --- every slice as JSONL (a slice holding only preference pairs takes no part in the SFT mix) --
    opts = SourceOptions(allow_local=allow_local, base_dir=base_dir)
    materialized = [materialize(s, opts) for s in slices if s.io_pairs or s.huggingface or s.openai_jsonl]
    # --- the held-out split: each slice's share of eval_size, from its distinct examples -------------
    if not materialized:
        split = no_split([])
    else:
        split = hold_out(materialized, config.oig.get("eval_size"), seed, {s.name for s in slices if not s.holdout},
                         where=str(config_path))
    # --- how many examples of each, from what is left for training ------------------------------------
    if not materialized and any(s.has_preferences for s in slices):  # preference pairs only: DPO alone
        allocation = Allocation(total=0, slices=[], warnings=["no slice has SFT examples: the mixture is empty "
                                                              "and only the preference pairs are written"])
    else:
        allocation = allocate(split.train_counts(), config.mixture, config.mixture_total if total is None else total,
                              where=str(config_path), held_out=split.held_out)
    allocation.warnings[:0] = split.warnings
    if plan_only or out_dir is None:
        return MixResult(allocation, plan(allocation, seed, materialized, config_path, split=split), None)
    # --- the mixture, the held-out examples and the manifest ------------------------------------------
    preferences = [materialize_preferences(s, opts) for s in slices if s.has_preferences]
    manifest = write_mixture(Path(out_dir), materialized, allocation, seed, config_path, preferences, split)
    return MixResult(allocation, manifest, Path(out_dir))
