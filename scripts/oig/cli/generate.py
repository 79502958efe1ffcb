"""oig generate: a dataset from several models' answers to instructions, judged and exported."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from oig.cli.args import add_allow_local_sources, positive_int, whole_number


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount in USD, e.g. 5 or 0.50, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected an amount above 0, not {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="build a dataset from several models' answers, judged",
        description="Ask every model in the config to answer every instruction (Together models through the "
        "together SDK, any OpenAI-compatible server such as `oig serve` or vLLM), optionally let an aggregator "
        "write its own answer from theirs, judge the answers, and write OUT/records.jsonl (one record per "
        "instruction) with sft.jsonl, prefs.jsonl and battles.jsonl beside it, each record appended as it "
        "finishes (to NAME.part files, renamed at the end; OUT/progress.json checkpoints them). Every finished "
        "call is stored in OUT/calls.sqlite: a rerun makes only the calls not made yet, and a rerun after an "
        "interruption goes on after the records already written. API keys come from the environment "
        "(TOGETHER_API_KEY, or a provider's api_key_env). Exit 0 when done, 1 on bad input or a failed "
        "source, 2 on a usage error.",
    )
    p.add_argument("--config", type=Path, required=True, metavar="FILE",
                   help="the generate config (see examples/generate.yaml and schemas/generate.schema.json)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for records.jsonl, the exports, run.json and the call store calls.sqlite")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="instructions in all, sampled with the seed (overrides the config's `limit`)")
    p.add_argument("--seed", type=whole_number, default=None, metavar="N", help="overrides the config's `seed` (default 42)")
    add_allow_local_sources(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned calls and the cost estimate; call nothing, write nothing")
    p.add_argument("--budget-usd", type=_usd, default=None, metavar="USD",
                   help="stop making calls once this much has been spent (needs a price for every model)")
    p.add_argument("--emit-slice", type=Path, default=None, metavar="data/NAME.yaml",
                   help="also write the best answers to single-turn prompts as a slice file (inline IOPairs "
                        "with the config's license and the data's provenance)")
    p.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                   help="also upload the exports as a Hugging Face dataset repository: parquet configs sft, prefs, "
                        "battles and records, and a dataset card with the models, judges, prompts, license and "
                        "config hash (token: HF_TOKEN; endpoint: HF_ENDPOINT when set); the commit sha is printed "
                        "and kept in run.json")
    p.add_argument("--private", action="store_true",
                   help="with --push-to-hub: create the dataset repository private (an existing one is left as is)")
    p.add_argument("--slice-mode", choices=["auto", "inline", "link"], default="auto",
                   help="what --emit-slice writes: inline IOPairs, or a HuggingFace: entry linking the pushed "
                        "dataset at its commit (link, needs --push-to-hub); auto (the default) links when the "
                        "dataset is pushed and has over 5,000 SFT rows or 8 MiB of sft.jsonl, else inline")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.generate.config import load_config
    from oig.generate.run import generate

    cfg = load_config(args.config)
    summary = generate(cfg, args.out, allow_local=args.allow_local_sources, limit=args.limit, seed=args.seed,
                       dry_run=args.dry_run, budget_usd=args.budget_usd, emit_slice=args.emit_slice,
                       push_to_hub=args.push_to_hub, hub_private=True if args.private else None,
                       slice_mode=args.slice_mode)
    if summary.dry_run:
        print(summary.plan_text)
        return 0
    if summary.resumed:
        print(f"resumed: {summary.resumed} records written by an interrupted run were kept as they were")
    for name, count in summary.files.items():
        print(f"wrote {args.out / name} ({count} lines)")
    if summary.responses and summary.response_errors == summary.responses:
        # Records were written (each with its error), but a run with no answer at all is a setup problem.
        print(f"oig generate: error: every model call failed; the first: {summary.first_error}", file=sys.stderr)
        return 1
    if summary.hub_revision is not None:
        print(f"pushed {summary.hub_link} at revision {summary.hub_revision}")
    if summary.slice_linked:
        print(f"wrote {args.emit_slice} (links {summary.slice_pairs} SFT rows at {summary.hub_link}@"
              f"{summary.hub_revision[:12]}); check it with `oig validate`")
    elif summary.slice_pairs is not None:
        skipped = f"; {summary.slice_skipped} multi-turn or system prompts left out" if summary.slice_skipped else ""
        print(f"wrote {args.emit_slice} ({summary.slice_pairs} IOPairs{skipped}); check it with `oig validate`")
    return 0
