"""A provider of ``kind: vllm``: vLLM's offline engine in this process, for local models at scale.

``VLLMClient.complete`` has the online client's shape (``oig.generate.clients``), so the pipeline, the
call store and the exports are the same as for any provider. Calls to one model gather in a queue and
go to the engine together, ``batch_size`` at a time or when none has come for ``flush_s`` seconds,
as one ``LLM.chat(conversations, sampling_params=[...])`` call in a worker thread (one engine call at
a time: they share the GPU); vLLM batches them on the GPU itself. Each model id gets one engine
(``vllm.LLM(model=..., **engine options)``), loaded on first use and kept for the run.

Settings map onto ``vllm.SamplingParams`` one to one (temperature, top_p, max_tokens, seed, stop,
presence_penalty, frequency_penalty). A judge's response_format becomes structured output:
``StructuredOutputsParams`` (``structured_outputs=``, vLLM 0.11 and later) or, before it,
``GuidedDecodingParams`` (``guided_decoding=``). vLLM itself is not a dependency of oig: it is imported
only when such a provider runs, and tests drive this module through a stub of that interface.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from typing import Any

from oig.errors import OigError
from oig.generate.clients import CallResult, _short
from oig.generate.config import Provider

INSTALL_HINT = "install vLLM on a GPU machine in its own environment (README: Local models at scale)"
ENGINE_ERRORS = (ImportError, OSError, ValueError, RuntimeError)  # vllm.LLM(...) failing to load a model


def installed() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # in sys.modules without a spec: a stand-in put there by a test
        return "vllm" in sys.modules


def load_engine(model: str, options: dict) -> Any:
    """``vllm.LLM(model=model, **options)``."""
    from vllm import LLM

    return LLM(model=model, **options)


def sampling_params(settings: dict, response_format: dict | None) -> Any:
    """``vllm.SamplingParams`` for one call's settings and structured output."""
    from vllm import SamplingParams

    extra: dict = {}
    if response_format is not None:
        kind = response_format.get("type")
        spec = ({"json": response_format["json_schema"]["schema"]} if kind == "json_schema"
                else {"json_object": True})
        try:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(**spec)
        except ImportError:  # vLLM before 0.11
            from vllm.sampling_params import GuidedDecodingParams

            extra["guided_decoding"] = GuidedDecodingParams(**spec)
    return SamplingParams(**settings, **extra)


class VLLMClient:
    """Calls to local models through vLLM's engine. Create it inside the running event loop."""

    def __init__(self, provider: Provider):
        if not installed():
            raise OigError(f"provider '{provider.name}' is kind vllm, but vLLM is not installed here; "
                           f"{INSTALL_HINT}, or serve the model and use kind openai")
        self.provider = provider
        self.engines: dict[str, Any] = {}
        self.queues: dict[str, list[tuple[list[dict], dict, dict | None, asyncio.Future]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._gpu = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.engine_calls = 0  # LLM.chat calls made, for the report

    async def complete(self, model: str, messages: list[dict], settings: dict,
                       response_format: dict | None = None) -> CallResult:
        future = asyncio.get_running_loop().create_future()
        queue = self.queues.setdefault(model, [])
        queue.append((messages, settings, response_format, future))
        if timer := self._timers.pop(model, None):
            timer.cancel()
        if len(queue) >= self.provider.batch_size:
            self._spawn(model)
        else:
            self._timers[model] = asyncio.get_running_loop().call_later(self.provider.flush_s, self._spawn, model)
        return await future

    def _spawn(self, model: str) -> None:
        self._timers.pop(model, None)
        batch = self.queues.get(model, [])[:self.provider.batch_size]
        self.queues[model] = self.queues.get(model, [])[len(batch):]
        if batch:
            task = asyncio.ensure_future(self._run(model, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.queues[model]:
            self._spawn(model)

    async def _run(self, model: str, batch: list) -> None:
        try:
            async with self._gpu:
                results = await asyncio.to_thread(self._generate, model, batch)
        except OigError as exc:  # the engine cannot load: the run stops with this, through every waiting call
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except Exception as exc:  # the engine failing on a batch is each of its calls' error, not the run's
            results = [CallResult(error=f"vLLM failed: {type(exc).__name__}: {_short(str(exc))}", attempts=1)] * len(batch)
        for (_, _, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _generate(self, model: str, batch: list) -> list[CallResult]:
        if model not in self.engines:
            try:
                self.engines[model] = load_engine(model, dict(self.provider.engine))
            except ENGINE_ERRORS as exc:
                raise OigError(f"vLLM cannot load {model}: {type(exc).__name__}: {_short(str(exc))} (if vLLM is "
                               f"missing: {INSTALL_HINT})") from None
        params = [sampling_params(settings, fmt) for _, settings, fmt, _ in batch]
        outputs = self.engines[model].chat([messages for messages, _, _, _ in batch], sampling_params=params,
                                           use_tqdm=False)
        self.engine_calls += 1
        if len(outputs) != len(batch):
            raise RuntimeError(f"LLM.chat returned {len(outputs)} outputs for {len(batch)} conversations")
        return [_result(out) for out in outputs]

    async def aclose(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.engines.clear()


def _result(out: Any) -> CallResult:
    """A vLLM RequestOutput as a call's result: the first completion's text, finish reason and tokens."""
    if not out.outputs:
        return CallResult(error="vLLM returned no completion", attempts=1)
    first = out.outputs[0]
    prompt = len(out.prompt_token_ids or [])
    completion = len(first.token_ids or [])
    return CallResult(text=first.text, finish_reason=first.finish_reason, attempts=1,
                      usage={"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}, provider_id=f"vllm-{out.request_id}")
