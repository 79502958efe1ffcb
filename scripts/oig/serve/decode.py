"""The engine's decode loop: continuous batching over the model's own forward pass and KV cache.

``Rows`` holds the requests generating now as one left-padded batch: a transformers ``DynamicCache``,
the attention mask over it, each row's next position and last token. Every ``step`` is one forward
pass for all rows (one token each). Requests that arrive meanwhile join between two steps: they are
prefilled together, and their cache is concatenated onto the running one (the shorter of the two
padded on the left, as Text Generation Inference's batches concatenate), so nobody waits for a batch
to end; a row that ends (its end token, its length, a cancel, its deadline) leaves at once and the
columns no row needs any more are cut off. A cache with layers that cannot be joined this way
(sliding-window or other special layers) only takes new rows when the batch is empty.

transformers' own continuous batching (``generate_batch`` / ``init_continuous_batching``, paged
attention) was measured first on the tiny model on CPU: 100-150 tokens/s for 16 requests of 64 tokens,
against 3,850 for ``generate`` on the same batch, and it has no per-request logit bias, seed,
constraint or log-probabilities; this loop keeps all of those per row (``Sampler``).

torch and transformers are imported lazily (this runs on the engine's thread).
"""

from __future__ import annotations

import inspect
import time
from typing import Any


class Rows:
    """The batch generating now. ``admit`` prefills new jobs and joins them; ``step`` generates one token
    for every row; ``prune`` lets the rows that ended go."""

    def __init__(self, model, sampler, eos: set[int], pad: int):
        import torch

        self.torch = torch
        self.model, self.sampler, self.eos, self.pad = model, sampler, eos, pad
        self.device = next(model.parameters()).device
        self.jobs: list = []
        self.cache = None
        self.mask = None  # [rows, columns] long: 1 where the cache holds a real token
        self.positions = None  # [rows] long: the position id of each row's next token
        self.last = None  # [rows] long: each row's last token, the next step's input
        self.joinable = True  # False once the cache is seen to have layers that cannot be concatenated
        params = inspect.signature(model.forward).parameters
        self.extra = {k: v for k, v in (("logits_to_keep", 1), ("use_cache", True)) if k in params}
        self.takes_positions = "position_ids" in params
        # PyTorch's SDPA takes the [rows, 1, 1, columns] mask of a decode step as it is: transformers would
        # build it from the padding mask every step (vmapped mask functions: about a tenth of a step here).
        self.sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"

    def _forward(self, input_ids, mask, positions, cache):
        if self.sdpa and self.joinable and input_ids.shape[1] == 1:  # joinable: full attention in every layer
            mask = mask[:, None, None, :].bool()
        kwargs = dict(self.extra)
        if self.takes_positions:
            kwargs["position_ids"] = positions
        out = self.model(input_ids=input_ids, attention_mask=mask, past_key_values=cache, **kwargs)
        return out.logits[:, -1, :]

    def admit(self, jobs: list) -> None:
        """Prefill ``jobs`` (one forward pass over their left-padded prompts), choose their first tokens and
        join them to the running rows."""
        from transformers import DynamicCache

        torch = self.torch
        width = max(len(j.prompt) for j in jobs)
        pads = [width - len(j.prompt) for j in jobs]
        input_ids = torch.tensor([[self.pad] * p + j.prompt for p, j in zip(pads, jobs, strict=True)],
                                 device=self.device)
        mask = torch.tensor([[0] * p + [1] * len(j.prompt) for p, j in zip(pads, jobs, strict=True)],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, mask, positions, cache)
        self.joinable = self.joinable and joinable(cache)
        picks = self.sampler.choose(jobs, logits)
        last = torch.tensor(picks, dtype=torch.long, device=self.device)
        nexts = torch.tensor([len(j.prompt) for j in jobs], dtype=torch.long, device=self.device)
        if not self.jobs:
            self.jobs, self.cache, self.mask, self.positions, self.last = list(jobs), cache, mask, nexts, last
        else:
            self._join(cache, mask)
            self.jobs.extend(jobs)
            self.positions = torch.cat([self.positions, nexts])
            self.last = torch.cat([self.last, last])
        self._hand_over(jobs, picks)

    def _join(self, cache, mask) -> None:
        """Concatenate a prefilled cache onto the running one, padding the shorter on the left."""
        torch = self.torch
        pad = torch.nn.functional.pad
        ours, theirs = self.mask.shape[1], mask.shape[1]
        width = max(ours, theirs)
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            a, b = width - ours, width - theirs
            old.keys = torch.cat([pad(old.keys, (0, 0, a, 0)), pad(new.keys, (0, 0, b, 0))])
            old.values = torch.cat([pad(old.values, (0, 0, a, 0)), pad(new.values, (0, 0, b, 0))])
        self.mask = torch.cat([pad(self.mask, (width - ours, 0)), pad(mask, (width - theirs, 0))])

    def step(self) -> None:
        """One forward pass: every row's next token."""
        torch = self.torch
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.jobs), 1))], dim=1)
        logits = self._forward(self.last[:, None], self.mask, self.positions[:, None], self.cache)
        picks = self.sampler.choose(self.jobs, logits)
        self.last = torch.tensor(picks, dtype=torch.long, device=self.device)
        self.positions += 1
        self._hand_over(self.jobs, picks)

    def _hand_over(self, jobs: list, picks: list[int]) -> None:
        """Each job's new token: kept, queued at most every ``job.stream_interval_s`` (the first at once;
        None: only at the end), and the job ended at its end token or its length."""
        now = time.monotonic()
        for job, token in zip(jobs, picks, strict=True):
            if job.ended:
                continue
            job.generated.append(token)
            if token in self.eos or len(job.generated) >= job.max_new:
                job.finish()
            elif job.stream_interval_s is not None and (job.sent == 0 or now - job.last_put >= job.stream_interval_s):
                job.flush()

    def prune(self) -> None:
        """End the rows that are cancelled or out of time; let every ended row go."""
        now = time.monotonic()
        for job in self.jobs:
            if not job.ended and job.deadline is not None and now >= job.deadline:
                job.expired = True
                job.finish()
            elif not job.ended and job.cancel.is_set():
                job.finish()
        keep = [i for i, job in enumerate(self.jobs) if not job.ended]
        if len(keep) == len(self.jobs):
            return
        self.jobs = [self.jobs[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.positions = self.last = None
            return
        torch = self.torch
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        if self.joinable:  # the columns on the left that no remaining row attends to
            used = self.mask.any(dim=0)
            first = int(used.to(torch.int8).argmax())
            if first > 0:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
                self.mask = self.mask[:, first:]


def joinable(cache) -> bool:
    """Whether rows with this cache can be joined by concatenation: every layer a plain DynamicLayer
    (keys and values [rows, heads, columns, dim], nothing kept beside them)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


class Sampler:
    """Chooses every row's next token with that row's settings: its penalties, logit bias and constraint,
    then transformers' warpers (temperature, top-k, top-p, min-p) and the row's own seeded generator.
    Rows that share a ``Sampling`` are warped together. Processors are built once per ``Sampling``; a
    row's bias vector and generator live on its job, so they last as rows come and go."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self._built: dict[Any, tuple] = {}

    def processors(self, sampling) -> tuple:
        """(penalties, repetition, warpers) for these settings, built once: OpenAI's penalties and
        transformers' repetition penalty (None when off), then its warpers in its order."""
        if sampling not in self._built:
            from transformers import (
                MinPLogitsWarper,
                RepetitionPenaltyLogitsProcessor,
                TemperatureLogitsWarper,
                TopKLogitsWarper,
                TopPLogitsWarper,
            )

            from oig.serve.processors import OpenAIPenalties

            penalties = (OpenAIPenalties(sampling.presence_penalty, sampling.frequency_penalty)
                         if sampling.presence_penalty or sampling.frequency_penalty else None)
            repetition = (RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)
                          if sampling.repetition_penalty != 1.0 else None)
            warpers = [] if sampling.greedy else [
                TemperatureLogitsWarper(sampling.temperature),
                *([TopKLogitsWarper(sampling.top_k)] if sampling.top_k > 0 else []),
                *([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1.0 else []),
                *([MinPLogitsWarper(sampling.min_p)] if sampling.min_p > 0 else [])]
            self._built[sampling] = (penalties, repetition, warpers)
        return self._built[sampling]

    def choose(self, jobs: list, scores) -> list[int]:
        """The next token of each row of ``scores`` ([rows, vocab] logits), as a list of ids."""
        import torch

        if all(_plain(job) for job in jobs):  # every row greedy, nothing to adjust: one argmax
            return scores.argmax(dim=-1).tolist()
        picks = [0] * len(jobs)
        groups: dict[Any, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.sampling, []).append(i)
        for sampling, rows in groups.items():
            index = torch.tensor(rows, dtype=torch.long, device=scores.device)
            chosen = self._choose(sampling, [jobs[r] for r in rows], scores.index_select(0, index))
            for r, token in zip(rows, chosen, strict=True):
                picks[r] = token
        return picks

    def _choose(self, sampling, jobs: list, scores) -> list[int]:
        import torch

        scores = scores.float()
        penalties, repetition, warpers = self.processors(sampling)
        for k, job in enumerate(jobs):
            if penalties is None and repetition is None and job.constraint is None:
                continue
            row = scores[k:k + 1]
            if penalties is not None:  # counts the tokens generated so far
                row = penalties(torch.tensor([job.generated], dtype=torch.long, device=row.device), row)
            if repetition is not None:  # the prompt's tokens and the generated ones (transformers' way)
                row = repetition(torch.tensor([job.prompt + job.generated], dtype=torch.long, device=row.device), row)
            if job.constraint is not None:
                allowed = job.constraint.allowed(job.prompt, job.generated)
                if allowed is not None:
                    mask = torch.full_like(row, float("-inf"))
                    mask[0, torch.tensor(allowed, dtype=torch.long, device=row.device)] = 0.0
                    row = row + mask
            scores[k:k + 1] = row
        biased = [k for k, job in enumerate(jobs) if job.logit_bias]
        if biased:  # after the penalties (the repetition penalty scales what it finds), all rows at once
            index = torch.tensor(biased, dtype=torch.long, device=scores.device)
            bias = torch.stack([self._bias(jobs[k]) for k in biased]).to(scores.device)
            scores.index_add_(0, index, bias)
        wants = [k for k, job in enumerate(jobs) if job.top_logprobs is not None]
        logprobs = torch.log_softmax(scores[wants], dim=-1) if wants else None
        if sampling.greedy:
            picks = scores.argmax(dim=-1)
        else:
            warped = scores
            for warper in warpers:
                warped = warper(None, warped)
            probs = torch.softmax(warped, dim=-1)
            picks = torch.multinomial(probs, 1).squeeze(1)
            for k, job in enumerate(jobs):  # a seeded row draws from its own generator: reproducible in any batch
                if job.seed is not None:
                    picks[k] = torch.multinomial(probs[k].cpu(), 1, generator=self._generator(job))[0]
        picks = picks.tolist()
        for n, k in enumerate(wants):
            job, token = jobs[k], picks[k]
            top = []
            if job.top_logprobs:
                best = torch.topk(logprobs[n], job.top_logprobs)
                top = [(int(i), float(v)) for v, i in zip(best.values, best.indices, strict=True)]
            job.logprobs.append((token, float(logprobs[n, token]), top))
        return picks

    def _bias(self, job):
        """The job's logit_bias as a vector to add (what SequenceBiasLogitsProcessor adds for one-token
        sequences), built once."""
        import torch

        if job.state.get("bias") is None:
            vector = torch.zeros(self.vocab)
            vector[torch.tensor(list(job.logit_bias), dtype=torch.long)] = torch.tensor(
                list(job.logit_bias.values()), dtype=torch.float)
            job.state["bias"] = vector
        return job.state["bias"]

    @staticmethod
    def _generator(job):
        import torch

        if job.state.get("generator") is None:
            job.state["generator"] = torch.Generator().manual_seed(job.seed % (2**64))
        return job.state["generator"]


def _plain(job) -> bool:
    return (job.sampling.greedy and job.logit_bias is None and job.constraint is None and job.top_logprobs is None
            and not job.sampling.presence_penalty and not job.sampling.frequency_penalty
            and job.sampling.repetition_penalty == 1.0)
