"""The logits processor the engine adds to transformers' own: OpenAI's presence and frequency
penalties. Called on the engine's thread with the ids so far and the next token's scores; torch is
imported lazily, as in inference."""

from __future__ import annotations


class OpenAIPenalties:
    """OpenAI's presence and frequency penalties, which transformers has no processor for (its
    RepetitionPenaltyLogitsProcessor divides, and counts the prompt): from each token's logit subtract
    ``frequency * count + presence * (count > 0)``, counting the tokens generated so far only."""

    def __init__(self, presence: float, frequency: float, prompt_length: int = 0):
        self.presence, self.frequency = presence, frequency
        self.prompt_length = prompt_length  # ids before this column are the prompt's; the engine passes only generated ones

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_length:]
        counts = torch.zeros_like(scores)
        if generated.shape[1]:
            counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
