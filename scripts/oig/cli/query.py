"""oig query TEXT: ask the model that model.yaml names; only the answer goes to stdout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "query",
        help="ask the trained model a question",
        description="Ask the model that model.yaml names and print only its answer. The question goes to "
        "the model's Together endpoint when it has one (TOGETHER_API_KEY), otherwise the local or Hub model "
        "is loaded with transformers and answers greedily. --base-url sends it to any OpenAI-compatible "
        "server instead (oig serve, vLLM).",
    )
    p.add_argument("text", metavar="TEXT", help="the question")
    p.add_argument("--model-yaml", type=Path, default=Path("model.yaml"), metavar="PATH",
                   help="the model.yaml naming the model (default: model.yaml)")
    p.add_argument("--base-url", metavar="URL",
                   help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000 (with or without /v1)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="longest answer in tokens (default 256)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.errors import UsageError
    from oig.serve.query import query

    if args.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    answer = query(args.text, model_yaml=args.model_yaml, base_url=args.base_url, max_tokens=args.max_tokens)
    print(answer)
    return 0
