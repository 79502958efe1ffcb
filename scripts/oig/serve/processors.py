"""Logits processors ``LocalModel.generate`` adds to transformers' own: OpenAI's presence and
frequency penalties, and the capture behind ``logprobs``. Called by ``model.generate`` on its thread
with the ids so far and the next token's scores; torch is imported lazily, as in inference."""

from __future__ import annotations

import queue


class Logprobs:
    """Keeps each step's log-probabilities (from ``generate``'s thread) until the token chosen there
    arrives, then makes OpenAI's ``logprobs.content`` entry for it and its ``top`` alternatives."""

    def __init__(self, top: int):
        self.top = top
        self.rows: queue.Queue = queue.Queue()

    def __call__(self, input_ids, scores):
        import torch

        row = torch.log_softmax(scores[0].float(), dim=-1)
        best = torch.topk(row, self.top) if self.top else None
        self.rows.put((row, best))
        return scores

    def entries(self, token_ids: list[int], tokenizer) -> list[dict]:
        def one(token_id: int, logprob: float) -> dict:
            text = tokenizer.decode([token_id])
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "backslashreplace"))}

        out = []
        for token_id in token_ids:
            try:
                row, best = self.rows.get_nowait()
            except queue.Empty:  # a step whose scores were not seen (none expected)
                break
            top = [] if best is None else [one(int(i), float(v)) for v, i in zip(best.values, best.indices,
                                                                                   strict=True)]
            out.append({**one(token_id, float(row[token_id])), "top_logprobs": top})
        return out


class OpenAIPenalties:
    """OpenAI's presence and frequency penalties, which transformers has no processor for (its
    RepetitionPenaltyLogitsProcessor divides, and counts the prompt): from each token's logit subtract
    ``frequency * count + presence * (count > 0)``, counting the tokens generated so far only."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency
        self.prompt_length: int | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self.prompt_length is None:  # the first call sees the prompt alone
            self.prompt_length = input_ids.shape[1]
        generated = input_ids[:, self.prompt_length:]
        counts = torch.zeros_like(scores)
        if generated.shape[1]:
            counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
