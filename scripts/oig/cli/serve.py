"""oig serve: an OpenAI-compatible chat service for the trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible API",
        description="Serve a model over an OpenAI-compatible HTTP API: POST /v1/chat/completions (plain "
        "and streaming), GET /v1/models, GET /health. With no --model it serves the model that model.yaml "
        "names (its local folder, else its Hub repo at the recorded revision).",
    )
    p.add_argument("--model", metavar="PATH_OR_HUB_ID", help="a model folder or a Hub repo id (default: model.yaml's)")
    p.add_argument("--revision", metavar="REV", help="the Hub revision of --model (branch, tag or commit)")
    p.add_argument("--model-yaml", type=Path, default=Path("model.yaml"), metavar="PATH",
                   help="the model.yaml to read when --model is not given (default: model.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="transformers (default, CPU or GPU) or vllm (GPU machines with vLLM installed)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.errors import UsageError
    from oig.serve import serve, serve_vllm

    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    model, revision = args.model, args.revision
    if not model:
        model, revision = model_from_yaml(args.model_yaml)
    if args.engine == "vllm":
        return serve_vllm(model, revision=revision, host=args.host, port=args.port)
    print(f"oig serve: loading {model}" + (f"@{revision}" if revision else ""), file=sys.stderr)
    serve(model, revision=revision, host=args.host, port=args.port)
    return 0


def model_from_yaml(path: Path) -> tuple[str, str | None]:
    """The model folder (or Hub repo and revision) that model.yaml names."""
    from oig.query import QueryError, read_model_yaml

    section = read_model_yaml(path)
    local = section.get("local_path")
    if local:
        folder = Path(local) if Path(local).is_absolute() else path.parent / local
        if folder.is_dir():
            return str(folder), None
    if section.get("hub_repo"):
        return section["hub_repo"], section.get("revision") or section.get("branch")
    if local:
        raise QueryError(f"{path} names the local model {local}, which is not here; pass --model")
    raise QueryError(f"{path} names only a Together model, which Together serves; pass --model to serve "
                     "a model here")
