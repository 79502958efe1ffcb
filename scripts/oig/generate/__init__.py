"""``oig generate``: datasets made by asking several models and judging their answers.

Modules, in pipeline order: ``schema`` and ``config`` (the YAML config), ``instructions`` (the prompts),
``store`` (every finished call, in SQLite), ``clients`` (calls to Together and OpenAI-compatible
servers: concurrency, rate limits, retries), ``batch`` (the same calls through a provider's batch API), ``local`` (vLLM's offline engine),
``calls`` (every call through the store, the budget, the counts), ``judges`` (prompts, verdicts,
scores), ``record`` (one instruction's answers and verdicts), ``run`` (the pipeline), ``stream``
(records and exports appended as they finish, resumable), ``export`` (SFT, preferences, battles, a
slice file), ``hub`` (the dataset on the Hugging Face Hub). Heavy libraries
(together, transformers) are imported inside functions only.
"""

from __future__ import annotations

__all__ = ["generate", "load_config"]


def __getattr__(name: str):
    # Lazy: `import oig.generate.config` must not pull in the pipeline and its HTTP clients.
    if name == "generate":
        from oig.generate.run import generate

        return generate
    if name == "load_config":
        from oig.generate.config import load_config

        return load_config
    raise AttributeError(name)
