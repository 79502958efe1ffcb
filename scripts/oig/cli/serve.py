"""oig serve: an OpenAI-compatible chat service for the trained model."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from oig.cli.args import positive_int, whole_number

API_KEY_ENV = "OIG_SERVE_API_KEY"  # the same as oig.serve.limits.API_KEY_ENV, which imports pydantic
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# The service's limits: None in argparse means "not given", so --engine vllm can say which it ignores.
LIMIT_FLAGS = {"max_tokens_cap": "--max-tokens-cap", "max_request_bytes": "--max-request-bytes",
               "max_messages": "--max-messages", "max_input_chars": "--max-input-chars",
               "max_concurrency": "--max-concurrency", "max_queue": "--max-queue",
               "max_connections": "--max-connections",
               "body_timeout": "--body-timeout", "request_timeout": "--request-timeout",
               "default_max_tokens": "--default-max-tokens", "max_model_len": "--max-model-len"}


def nonnegative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible API",
        description="Serve a model over an OpenAI-compatible HTTP API: POST /v1/chat/completions (plain "
        "and streaming), GET /v1/models, GET /health (200 once the model is loaded, 503 while it loads), "
        "GET /metrics (Prometheus text). With no --model it serves the model that model.yaml names (its "
        "local folder, else its Hub repo at the recorded revision). The port opens at once; the model "
        "loads behind it.",
    )
    p.add_argument("--model", metavar="PATH_OR_HUB_ID", help="a model folder or a Hub repo id (default: model.yaml's)")
    p.add_argument("--revision", metavar="REV", help="the Hub revision of --model (branch, tag or commit)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model name /v1/models lists and answers carry (default: model.yaml's Hub repo, "
                   "else its Together model, else its folder's name; with --model, --model). A request "
                   "naming the model's path or Hub id is served too")
    p.add_argument("--model-yaml", type=Path, default=Path("model.yaml"), metavar="PATH",
                   help="the model.yaml to read when --model is not given (default: model.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default 8000)")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="transformers (default, CPU or GPU) or vllm (GPU machines with vLLM installed)")
    prod = p.add_argument_group("production", "Access and limits. --engine vllm carries the API key, "
                                "--served-model-name, --max-concurrency, --max-model-len, --default-max-tokens "
                                "and --lora-modules, and names the others it cannot. Refusals use OpenAI's "
                                "error shape.")
    prod.add_argument("--api-key-env", metavar="NAME",
                      help="the environment variable holding the key clients must send as 'Authorization: "
                      f"Bearer KEY' on every route but /health; 401 otherwise (default: {API_KEY_ENV} if it is "
                      "set, else no key). There is no flag for the key itself: ps would show it")
    prod.add_argument("--public-metrics", action="store_true",
                      help="serve /metrics without the API key (for a scraper on a private network)")
    prod.add_argument("--no-ui", dest="ui", action="store_false",
                      help="do not serve the chat page at GET / (it is served by default; its API calls need "
                      "the API key like any client's)")
    prod.add_argument("--default-max-tokens", type=positive_int, metavar="N",
                      help="max_tokens of a request that names none (default 512)")
    prod.add_argument("--max-model-len", type=positive_int, metavar="N",
                      help="the context, in tokens, prompt and answer together (default: the model's own); "
                      "a longer prompt gets 400")
    prod.add_argument("--lora-modules", nargs="+", metavar="NAME=PATH",
                      help="with --engine vllm: LoRA adapters served beside the base model, each under its "
                      "NAME (vLLM's --enable-lora --lora-modules)")
    prod.add_argument("--max-lora-rank", type=positive_int, metavar="N",
                      help="with --lora-modules: the largest adapter rank (vLLM's --max-lora-rank)")
    prod.add_argument("--max-tokens-cap", type=positive_int, metavar="N",
                      help="a request asking for more max_tokens gets 400 (default 4096)")
    prod.add_argument("--max-request-bytes", type=positive_int, metavar="N",
                      help="a bigger request body gets 413 before it is parsed (default 1048576)")
    prod.add_argument("--max-messages", type=positive_int, metavar="N",
                      help="a request with more messages gets 400 (default 500)")
    prod.add_argument("--max-input-chars", type=positive_int, metavar="N",
                      help="a request whose messages hold more characters in all gets 400 (default 400000)")
    prod.add_argument("--max-concurrency", type=positive_int, metavar="N",
                      help="chat completions generating at once: the engine's batch holds up to N, new "
                      "ones joining as others end (default 16)")
    prod.add_argument("--max-queue", type=nonnegative_int, metavar="N",
                      help="chat completions waiting for the model beyond those generating, served in "
                      "arrival order, each within --request-timeout; one more gets 429 with Retry-After "
                      "(default 64)")
    prod.add_argument("--max-connections", type=positive_int, metavar="N",
                      help="open connections, idle keep-alive ones included; a request on one more gets 503 "
                      "from uvicorn (default 256)")
    prod.add_argument("--body-timeout", type=seconds, metavar="S",
                      help="seconds a request's headers may take to arrive, and then its body; past it the "
                      "answer is 408 and the connection closes. A slow body holds its connection only, never a "
                      "place in the queue; 0: no limit (default 10)")
    prod.add_argument("--request-timeout", type=seconds, metavar="S",
                      help="seconds a chat completion may take from arrival, waiting for the model included; "
                      "past it generation stops and the answer is 504 (a stream ends with an error event); "
                      "0: no limit (default 600)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from oig.errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    api_key = api_key_from_env(args.api_key_env)
    model, revision, name = args.model, args.revision, args.served_model_name
    if not model:
        model, revision, stable = model_from_yaml(args.model_yaml)
        name = name or stable
    if args.engine == "vllm":
        from oig.serve.vllm import serve_vllm, vllm_command

        given = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
        given.update(public_metrics=args.public_metrics, ui=args.ui)
        command, uncarried = vllm_command(model, revision=revision, host=args.host, port=args.port, name=name,
                                          given=given, lora_modules=args.lora_modules,
                                          max_lora_rank=args.max_lora_rank)
        if uncarried:
            flags = {**LIMIT_FLAGS, "public_metrics": "--public-metrics (vLLM serves /metrics without the key in any "
                     "case)", "ui": "--no-ui (vLLM serves no chat page in any case)"}
            print(f"oig serve: note: vLLM has no equivalent of {', '.join(flags[f] for f in uncarried)}; with "
                  "--engine vllm they do not apply", file=sys.stderr)
        return serve_vllm(command, api_key)
    if args.lora_modules or args.max_lora_rank:
        raise UsageError("--lora-modules and --max-lora-rank need --engine vllm; the transformers engine serves "
                         "one model (merge the adapter, or serve its folder)")
    from oig.serve.server import serve

    if api_key is None and args.host not in LOOPBACK:
        print(f"oig serve: warning: listening on {args.host} with no API key: anyone who can reach it can use "
              f"it (set {API_KEY_ENV})", file=sys.stderr)
    serve(model, revision=revision, host=args.host, port=args.port, settings=settings_from_args(args, api_key),
          name=name)
    return 0


def api_key_from_env(name: str | None) -> str | None:
    """The API key from the environment variable ``name`` (default: OIG_SERVE_API_KEY when set)."""
    from oig.errors import UsageError

    if name is None:
        return os.environ.get(API_KEY_ENV) or None
    # Neither message repeats what was given: it may be a key passed by mistake.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError("--api-key-env takes the NAME of an environment variable that holds the key, not a key")
    key = os.environ.get(name)
    if not key:
        raise UsageError("--api-key-env names an environment variable that is not set or is empty")
    return key


def settings_from_args(args: argparse.Namespace, api_key: str | None):
    """ServeSettings from the flags; a flag not given keeps the ServeSettings default."""
    from oig.serve.limits import ServeSettings

    given = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
    for name in ("body_timeout", "request_timeout"):
        if given.get(name) == 0:
            given[name] = None
    return ServeSettings(api_key=api_key, public_metrics=args.public_metrics, ui=args.ui, **given)


def model_from_yaml(path: Path) -> tuple[str, str | None, str]:
    """The model folder (or Hub repo and revision) that model.yaml names, and the name to serve it as."""
    from oig.serve import locate

    model = locate.read(path)
    weights = locate.weights(model, path.parent, source=path, hint="pass --model to serve a model here")
    return weights.ref, weights.revision, served_name(model)


def served_name(model) -> str:
    """A name that stays the same from run to run (``model``: a ModelRef): the Hub repo, else the
    Together model, else the model folder's name, never the run's path, which changes every run."""
    if model.hub_repo:
        return model.hub_repo
    if model.together is not None:
        return model.together.model
    return Path(model.local_path).name
