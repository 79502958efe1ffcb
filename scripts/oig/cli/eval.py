"""oig eval: run the eval suites (evals/*.yaml) against a model, with the previous model's scores beside."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score the model on the eval suites (evals/), beside the previous model",
        description="Ask the model every case of every suite in --suites (default evals/), check each answer "
        "(exact, contains, regex, choice, similar or judge) and print each suite's score with its 95% "
        "interval; with --compare, the previous model's score, the change and its 95% interval (paired "
        "bootstrap). Exit 1 when a suite cannot run (a model that does not answer, no judge model).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model-yaml", type=Path, metavar="PATH",
                       help="the model model.yaml names (default: model.yaml)")
    which.add_argument("--model", metavar="PATH_OR_HUB_ID", help="a model folder or Hub repo id, loaded here")
    p.add_argument("--base-url", metavar="URL",
                   help="ask this OpenAI-compatible server (oig serve, vLLM, Together) instead of loading weights")
    p.add_argument("--model-name", metavar="NAME", help="with --base-url: the model to ask it for "
                   "(default: model.yaml's, else the first it serves)")
    p.add_argument("--compare", type=Path, metavar="MODEL_YAML", help="the previous model.yaml, scored beside it")
    p.add_argument("--suites", type=Path, default=None, metavar="DIR",
                   help="a folder of suites or one suite file (default: evals)")
    p.add_argument("--suite", action="append", metavar="NAME", help="run only this suite (repeatable)")
    p.add_argument("--judge-model", metavar="MODEL", help="the judge for judged cases (overrides the suites' judge)")
    p.add_argument("--judge-base-url", metavar="URL", help="the judge's OpenAI-compatible server (default: Together)")
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text",
                   help="text, json (the stable results dict; README: Evaluation) or markdown")
    p.add_argument("--gate", action="store_true", help="apply the release gate (training.yaml's Gate:); exit 1 "
                   "when it fails")
    p.add_argument("--config", type=Path, default=Path("training.yaml"), metavar="PATH",
                   help="where --gate reads Gate: (default: training.yaml)")
    p.add_argument("--concurrency", type=_positive, default=8, metavar="N",
                   help="questions in flight at once, to a server or to weights loaded here (whose engine "
                   "batches them) (default 8)")
    p.add_argument("--max-tokens", type=_positive, default=256, metavar="N", help="longest answer (default 256)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.data.evals import load_suites
    from oig.errors import UsageError
    from oig.eval import models
    from oig.eval.render import render_markdown, render_text
    from oig.serve import locate

    if args.model_name and not args.base_url:
        raise UsageError("--model-name needs --base-url")
    if args.model and args.base_url:
        raise UsageError("--model loads weights here; --base-url asks a server: pass one of them")
    from oig.data.config import load_training_config
    from oig.eval import stage

    # training.yaml's Eval: (suites folder, lm-eval tasks, judged comparison) and Gate:, read first: a
    # mistake there fails before any model is asked. No training.yaml: the defaults.
    config = load_training_config(args.config)
    suites = load_suites(args.suites if args.suites is not None else Path(config.eval.suites if config.eval else "evals"),
                         args.suite)
    model = models.from_options(model_yaml=args.model_yaml, model=args.model, base_url=args.base_url,
                                model_name=args.model_name, max_tokens=args.max_tokens, concurrency=args.concurrency)
    previous = None
    if args.compare is not None:
        try:
            previous = models.from_model_yaml(args.compare, max_tokens=args.max_tokens, concurrency=args.concurrency)
        except Exception as exc:
            raise models.EvalError(f"--compare {args.compare}: {exc}") from None
    judge = models.judge_model(args.judge_model, args.judge_base_url, concurrency=args.concurrency) \
        if args.judge_model else None
    weights = model.where.ref if isinstance(model.where, locate.Weights) else None  # lm-eval loads weights
    results = stage.evaluate(config, model, previous, suites=suites, judge=judge, lm_eval_model=weights,
                             concurrency=args.concurrency)

    if args.format == "json":
        print(json.dumps(results, indent=2, ensure_ascii=False))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(results))
    else:
        sys.stdout.write(render_text(results))
    if args.gate:
        passed, reasons = stage.gate(config, results)
        for reason in reasons:
            print(f"oig eval: gate: {reason}", file=sys.stderr)
        print(f"oig eval: the release gate {'passed' if passed else 'failed'}", file=sys.stderr)
        return 0 if passed else 1
    return 0
