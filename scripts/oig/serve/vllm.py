"""``oig serve --engine vllm``: the same service handed to vLLM's OpenAI-compatible server (GPU
machines with vLLM installed), with every oig flag that vLLM has carried over, and the ones it has
not named.

What carries (oig flag -> vLLM flag):
- ``--served-model-name NAME`` -> ``--served-model-name NAME MODEL`` (vLLM lists the first; the path
  stays an alias, as with the transformers engine); ``--host``, ``--port``, ``--revision`` as they are.
- the API key -> ``VLLM_API_KEY`` in vLLM's environment (never on its command line: ps shows that).
- ``--max-concurrency N`` -> ``--max-num-seqs N`` (sequences in one batch).
- ``--max-model-len N`` -> ``--max-model-len N``.
- ``--default-max-tokens N`` -> ``--override-generation-config '{"max_new_tokens": N}'``.
- ``--lora-modules NAME=PATH ...`` -> ``--enable-lora --lora-modules NAME=PATH ...`` (and
  ``--max-lora-rank`` when given).
- always ``--generation-config auto``: sampling defaults from the model's generation_config.json, as
  the transformers engine does.

What vLLM has no flag for, and so does not apply there (each is named when given):
``--max-tokens-cap``, ``--max-request-bytes``, ``--max-messages``, ``--max-input-chars``,
``--max-queue``, ``--max-connections``, ``--body-timeout``, ``--request-timeout``; and the chat page
(vLLM serves none). vLLM answers ``/metrics`` without the API key whatever ``--public-metrics`` says.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from oig.serve.inference import ServeError

# ServeSettings fields vLLM cannot enforce (the command line names their flags).
NOT_CARRIED = ("max_tokens_cap", "max_request_bytes", "max_messages", "max_input_chars", "max_queue",
               "max_connections", "body_timeout", "request_timeout")


def vllm_command(model: str, *, revision: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 name: str | None = None, given: dict | None = None, lora_modules: list[str] | None = None,
                 max_lora_rank: int | None = None) -> tuple[list[str], list[str]]:
    """vLLM's command line for these settings, and the settings given that it cannot carry.

    ``given`` holds the ServeSettings fields the user set (field -> value): max_concurrency,
    max_model_len, default_max_tokens carry; the NOT_CARRIED ones given are returned by field name, as
    are ``ui`` False and ``public_metrics``."""
    given = dict(given or {})
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", *dict.fromkeys([name or model, model]), "--host", host, "--port", str(port),
               "--generation-config", "auto"]
    if revision:
        command += ["--revision", revision]
    if given.get("max_concurrency") is not None:
        command += ["--max-num-seqs", str(given["max_concurrency"])]
    if given.get("max_model_len") is not None:
        command += ["--max-model-len", str(given["max_model_len"])]
    if given.get("default_max_tokens") is not None:
        command += ["--override-generation-config", json.dumps({"max_new_tokens": given["default_max_tokens"]})]
    if lora_modules:
        command += ["--enable-lora", "--lora-modules", *lora_modules]
        if max_lora_rank is not None:
            command += ["--max-lora-rank", str(max_lora_rank)]
    uncarried = [field for field in NOT_CARRIED if given.get(field) is not None]
    uncarried += ["public_metrics"] if given.get("public_metrics") else []
    uncarried += ["ui"] if given.get("ui") is False else []
    return command, uncarried


def serve_vllm(command: list[str], api_key: str | None) -> int:
    """Run vLLM's server with ``command`` until it exits; the API key goes in VLLM_API_KEY."""
    if importlib.util.find_spec("vllm") is None:
        raise ServeError("--engine vllm needs vLLM, which is not installed here (it runs on GPU machines: "
                         "pip install vllm, in its own environment); leave out --engine to serve with transformers")
    env = {**os.environ, "VLLM_API_KEY": api_key} if api_key else None
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
