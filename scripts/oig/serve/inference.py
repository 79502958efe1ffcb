"""Generating answers with a local or Hub model (transformers): loaded once, greedy or sampled, with
stop strings, a cancel event and a deadline checked after every token. ``oig serve``, ``oig query`` and
the bug suite all answer through ``LocalModel``; it is the only code here that touches torch, and it
imports it lazily.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oig.errors import OigError
from oig.records import special_token_texts
from oig.serve.processors import Logprobs, OpenAIPenalties

DEFAULT_MAX_TOKENS = 512


class ServeError(OigError):
    """The model cannot be loaded or served."""


class GenerationTimeout(ServeError):
    """The request's deadline passed before its answer was complete (answered with HTTP 504)."""


class GenerationCancelled(ServeError):
    """Generation was stopped from outside (the client went away) before its answer was complete."""


class BadRequest(ValueError):
    """A request the model cannot answer as asked (answered with HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class Generation:
    """What one request produced, filled in while its text is generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)
    # With logprobs asked for: one OpenAI-shaped entry per generated token, {token, logprob, bytes,
    # top_logprobs}, appended as each token arrives (a stream can send the new ones with each piece).
    logprobs: list[dict] = field(default_factory=list)


class _IdStreamer:
    """Receives token ids from ``generate`` (on its thread) and hands them to the consumer."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class LocalModel:
    """A causal LM and its tokenizer with a chat template, loaded once and served one request at a time."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.lock = threading.Lock()
        self.created = int(time.time())
        config = getattr(model, "config", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.special_tokens = frozenset(special_token_texts(tokenizer))
        # Longest first: a token that begins another (<s>, <start>) must not hide it from the match.
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None

    @classmethod
    def load(cls, ref: str | Path, *, revision: str | None = None, name: str | None = None) -> LocalModel:
        """Load a local folder or a Hub repo (at ``revision``); bf16 on a GPU, fp32 on a CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ref = str(ref)
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=False)
            cuda = torch.cuda.is_available()
            dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
            model = AutoModelForCausalLM.from_pretrained(ref, revision=revision, dtype=dtype,
                                                         trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServeError(f"cannot load model {ref}" + (f"@{revision}" if revision else "") + f": {first}") from None
        if not getattr(tokenizer, "chat_template", None):
            raise ServeError(f"model {ref} has no chat template; oig serves chat models only")
        if cuda:
            model = model.to("cuda")
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, name or ref)

    def special_token_in(self, text: str) -> str | None:
        """The first special token whose text ``text`` holds, else None. The tokenizer turns that text
        into the real control token, so a message holding ``<|im_start|>system`` could forge a turn.
        About 15 ms for 400k characters against 260 tokens."""
        found = self._special.search(text) if self._special is not None else None
        return found.group() if found else None

    def template_variables(self) -> frozenset[str]:
        """The names the chat template reads from outside (jinja's undeclared variables): ``messages``,
        ``tools``, ``enable_thinking``, ...; empty when it is not one template string."""
        template = getattr(self.tokenizer, "chat_template", None)
        if not isinstance(template, str):
            return frozenset()
        from jinja2 import meta
        from transformers.utils.chat_template_utils import _compile_jinja_template

        # transformers' own environment: its {% generation %} tag and loop controls parse there.
        environment = _compile_jinja_template(template).environment
        return frozenset(meta.find_undeclared_variables(environment.parse(template)))

    def renders_tools(self) -> bool:
        """Whether the chat template renders tool definitions, assistant tool calls and tool results
        (it reads ``tools`` and mentions ``tool_calls``); a template that does not would drop them."""
        return "tools" in self.template_variables() and "tool_calls" in str(self.tokenizer.chat_template)

    def encode(self, messages: list[dict], chat_template_kwargs: dict | None = None) -> list[int]:
        """The prompt's token ids: the chat template with the assistant turn opened. Each key of
        ``chat_template_kwargs`` must be a variable the template reads (not one transformers sets)."""
        extra = dict(chat_template_kwargs or {})
        readable = self.template_variables() - _TEMPLATE_OWN
        unread = sorted(set(extra) - readable)
        if unread:
            raise BadRequest(f"chat_template_kwargs: the model's chat template does not read {', '.join(unread)}"
                             f" (it reads {', '.join(sorted(readable)) or 'no other variables'})",
                             "chat_template_kwargs")
        try:
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                     **extra)
        except Exception as exc:  # jinja raises its own errors for conversations the template refuses
            raise BadRequest(f"the model's chat template refused these messages: {exc}", "messages") from None
        ids = enc["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def generate(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, repetition_penalty: float | None = None,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: dict[int, float] | None = None, stop: list[str] | None = None,
                 seed: int | None = None, logprobs: int | None = None, cancel: threading.Event | None = None, deadline: float | None = None,
                 result: Generation | None = None) -> Iterator[str]:
        """Yield the answer's text as it is generated; ``result`` gets token counts and finish reason.

        temperature 0 is greedy decoding. A sampling setting left None (temperature, top_p, top_k,
        repetition_penalty) comes from the model's generation_config.json where that file sets it, as
        transformers and vLLM do, else temperature 1 and no top-p, top-k or repetition penalty.
        presence_penalty and frequency_penalty follow OpenAI's formula; logit_bias maps token ids to a
        bias added to their logits. ``logprobs`` (0 to 20 alternatives) fills ``result.logprobs``:
        log-probabilities after the penalties and bias, before temperature, top-k and top-p (the
        distribution the model and the request's penalties give). Text stops before the first ``stop`` string. Setting ``cancel``
        stops generation at the next token and raises GenerationCancelled; passing ``deadline`` (a
        ``time.monotonic()`` value, counting the wait for the model too) does the same and raises
        GenerationTimeout. Closing the iterator stops generation quietly.
        """
        result = result if result is not None else Generation()
        cancel = cancel or threading.Event()
        sampling = self.sampling(temperature=temperature, top_p=top_p, top_k=top_k,
                                 repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, logit_bias=logit_bias)
        prompt = self.encode(messages)
        result.prompt_tokens = len(prompt)
        room = (self.context_length - len(prompt)) if self.context_length else None
        if room is not None and room < 1:
            raise BadRequest(f"the prompt is {len(prompt)} tokens; the model's context is {self.context_length}",
                             "messages", "context_length_exceeded")
        max_new = max_tokens or DEFAULT_MAX_TOKENS
        if room is not None:
            max_new = min(max_new, room)
        stops = [s for s in stop or [] if s]
        capture = Logprobs(logprobs) if logprobs is not None else None
        if capture is not None:
            sampling["logits_processor"].append(capture)
        yield from self._stream(prompt, max_new, sampling, stops, seed, cancel, deadline, result, capture)

    def sampling(self, *, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 repetition_penalty: float | None = None, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0, logit_bias: dict[int, float] | None = None) -> dict:
        """The keyword arguments ``model.generate`` samples with: the request's settings, else the ones
        the model's generation_config.json sets (only those it sets: ``to_diff_dict``, as vLLM reads
        it), else temperature 1 and nothing else. Unknown token ids in ``logit_bias`` are a BadRequest."""
        from transformers import LogitsProcessorList, SequenceBiasLogitsProcessor

        shipped = self.model.generation_config.to_diff_dict() if getattr(self.model, "generation_config", None) else {}
        if temperature is None:
            # do_sample: false in the model's file is greedy decoding, as generate() would do by default.
            temperature = 0.0 if shipped.get("do_sample") is False else float(shipped.get("temperature", 1.0) or 0.0)
        processors = LogitsProcessorList()
        if logit_bias:
            vocab = len(self.tokenizer)
            unknown = [t for t in logit_bias if not 0 <= int(t) < vocab]
            if unknown:
                raise BadRequest(f"logit_bias: token id(s) {unknown} are not in the model's vocabulary of {vocab}",
                                 "logit_bias")
            processors.append(SequenceBiasLogitsProcessor([[[int(t)], float(b)] for t, b in logit_bias.items()]))
        if presence_penalty or frequency_penalty:
            processors.append(OpenAIPenalties(presence_penalty, frequency_penalty))
        repetition_penalty = repetition_penalty if repetition_penalty is not None else shipped.get("repetition_penalty")
        kwargs: dict = {"logits_processor": processors, "repetition_penalty": repetition_penalty}
        if temperature > 0:
            top_p = top_p if top_p is not None else shipped.get("top_p", 1.0)
            top_k = top_k if top_k is not None else shipped.get("top_k", 0)
            # top_k 0 (and vLLM's -1): no top-k; generate() would otherwise default to 50.
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=max(int(top_k or 0), 0))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _acquire(self, cancel: threading.Event, deadline: float | None) -> None:
        """Wait for the model, giving up when the caller cancels or the deadline passes."""
        while not self.lock.acquire(timeout=0.05):  # 50 ms: how late a cancel or a deadline is noticed
            if cancel.is_set():
                raise GenerationCancelled("cancelled while waiting for the model")
            if deadline is not None and time.monotonic() >= deadline:
                raise GenerationTimeout("the request ran out of time waiting for the model, which was busy "
                                        "with other requests")

    def _stream(self, prompt: list[int], max_new: int, sampling: dict, stops: list[str], seed: int | None, cancel: threading.Event, deadline: float | None,
                result: Generation, capture: Logprobs | None = None) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        expired = threading.Event()  # the deadline, not the caller, stopped generation

        class Interrupt(StoppingCriteria):
            """Checked after every token: a cancel or a passed deadline ends generation there."""

            def __call__(self, input_ids, scores, **kwargs):
                if deadline is not None and time.monotonic() >= deadline:
                    expired.set()
                stop = cancel.is_set() or expired.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        streamer = _IdStreamer()
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt], device=device)
        kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "max_new_tokens": max_new,
                  "streamer": streamer, "stopping_criteria": StoppingCriteriaList([Interrupt()]),
                  "pad_token_id": self.tokenizer.pad_token_id, **sampling}
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    if seed is not None:
                        torch.manual_seed(seed)
                    self.model.generate(**kwargs)
            except BaseException as exc:  # handed to the consumer, which raises it on its thread
                failure.append(exc)
                streamer.end()
            finally:
                self.lock.release()

        self._acquire(cancel, deadline)
        thread = threading.Thread(target=work, name="oig-generate", daemon=True)
        try:
            thread.start()
        except BaseException:
            self.lock.release()
            raise
        eos = set(_as_list(getattr(self.model.generation_config, "eos_token_id", None))) | set(
            _as_list(self.tokenizer.eos_token_id))
        ids: list[int] = []
        # Decoding all ids after every token costs O(n^2); text up to a finished line is kept as it
        # was decoded and only the tokens after it are decoded again (as TextStreamer does).
        committed, anchor = "", 0

        def decoded() -> str:
            return committed + self.tokenizer.decode(ids[anchor:], skip_special_tokens=True)

        sent = 0  # characters of the decoded text already yielded
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may be forming at the end
        ended_on_eos = False
        try:
            while True:
                chunk = streamer.queue.get()
                if chunk is None:
                    break
                ids.extend(chunk)
                if capture is not None:
                    result.logprobs.extend(capture.entries(chunk, self.tokenizer))
                result.completion_tokens = len(ids)
                ended_on_eos = bool(chunk) and chunk[-1] in eos
                text = decoded()
                if text.endswith("\ufffd"):
                    continue  # half of a multi-byte character: wait for the rest
                if text.endswith("\n"):
                    committed, anchor = text, len(ids)
                cut = _first_stop(text, stops, sent)
                if cut is not None:
                    if cut > sent:
                        yield text[sent:cut]
                    result.text.append(text[:cut])
                    result.finish_reason = "stop"
                    cancel.set()
                    return
                safe = len(text) - hold
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
            if failure:
                raise ServeError(f"generation failed: {failure[0]}")
            if expired.is_set():
                raise GenerationTimeout(f"the request ran out of time after {len(ids)} generated token(s)")
            if cancel.is_set():  # only the caller sets it before this point
                raise GenerationCancelled(f"cancelled after {len(ids)} generated token(s)")
            text = decoded()
            cut = _first_stop(text, stops, 0)
            final = text if cut is None else text[:cut]
            if len(final) > sent:
                yield final[sent:]
            result.text.append(final)
            result.finish_reason = "stop" if (ended_on_eos or cut is not None or len(ids) < max_new) else "length"
        finally:
            cancel.set()
            thread.join()

    def complete(self, messages: list[dict], *, result: Generation | None = None, **options) -> tuple[str, Generation]:
        """The whole answer at once (``result``, if given, has the counts even when generation fails)."""
        result = result if result is not None else Generation()
        text = "".join(self.generate(messages, result=result, **options))
        return text, result


# Variables apply_chat_template sets itself: not a client's to pass through chat_template_kwargs.
_TEMPLATE_OWN = frozenset({"messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
                           "bos_token", "eos_token", "pad_token", "unk_token", "raise_exception", "strftime_now"})


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _first_stop(text: str, stops: list[str], start: int) -> int | None:
    """Where the earliest stop string begins, searching from just before ``start``."""
    best = None
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best
