"""Stage: using a model. Local inference, `oig query`, `oig serve` (OpenAI-compatible HTTP)."""
