"""The OpenAI wire format of ``oig serve``: the routes, the request models (pydantic), the error shape
``{"error": {"message", "type", "param", "code"}}``, and the checks a parsed request must pass before
the model sees it (this server's limits, and no message holding a special token's text)."""

# No `from __future__ import annotations`: FastAPI reads the request model from the route's real
# annotations, and pydantic the models' fields.
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oig.serve.inference import Generation, LocalModel

CHAT_ROUTE = "/v1/chat/completions"
ROUTES = (CHAT_ROUTE, "/v1/models", "/health", "/metrics")  # metrics label any other path "other"
MIN_TEMPERATURE = 1e-3  # below it (0 aside) logits / temperature can overflow to inf and sampling to NaN
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's (a signed 64-bit integer); torch.manual_seed takes it


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None):
    """A refusal in OpenAI's error shape."""
    from fastapi.responses import JSONResponse

    # JSON may carry a lone surrogate ("\ud800"), which UTF-8 cannot encode; a message echoing one
    # (an unknown model's name) would otherwise fail to render and become a 500.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


# --- requests -----------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` and other fields the model has no use for
    role: Literal["system", "user", "assistant"]
    # Tool calls in the history would be dropped on the way to the chat template: refused, not lost.
    # Declared before content, so that an assistant turn with `content: null` is told about its calls.
    tool_calls: Any = None
    function_call: Any = None
    content: str | list[TextPart]

    @model_validator(mode="before")
    @classmethod
    def _roles(cls, v):
        # OpenAI's `developer` role is its newer name for `system` (oig's data converter maps it so too).
        if isinstance(v, dict) and v.get("role") == "developer":
            v = {**v, "role": "system"}
        return v

    @field_validator("role", mode="before")
    @classmethod
    def _tool_role(cls, v):
        if v in ("tool", "function"):
            raise ValueError(f"{v} messages are not supported yet: this server passes only each message's "
                             "role and content to the chat template, so the tool's result would be lost")
        return v

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _tool_calls(cls, v, info):
        if v:
            raise ValueError(f"assistant {info.field_name} are not supported yet: this server passes only each "
                             "message's role and content to the chat template")
        return v

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


# Fields of OpenAI's (and vLLM's) chat-completions request this server cannot honour yet, each with its
# value that means "no effect" (accepted) and what a client asking for more would miss. Any other value is
# a 400 naming the field: a client that asks for an effect is told it will not get one. README: "Request
# fields".
NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "tools": ((None, []), "tool definitions are not supported yet"),
    "tool_choice": ((None, "none"), "tool calling is not supported yet"),
    "parallel_tool_calls": ((None,), "tool calling is not supported yet"),
    "functions": ((None, []), "function calling is not supported yet"),
    "function_call": ((None, "none"), "function calling is not supported yet"),
    "response_format": ((None, {"type": "text"}), "response_format json_schema and json_object are not "
                        "supported yet; only {\"type\": \"text\"}"),
    "logprobs": ((None, False), "logprobs are not supported yet"),
    "top_logprobs": ((None, 0), "top_logprobs are not supported yet"),
    "presence_penalty": ((None, 0), "presence_penalty is not supported yet"),
    "frequency_penalty": ((None, 0), "frequency_penalty is not supported yet"),
    "logit_bias": ((None, {}), "logit_bias is not supported yet"),
    "top_k": ((None, -1, 0), "top_k is not supported yet"),
    "repetition_penalty": ((None, 1), "repetition_penalty is not supported yet"),
    "min_p": ((None, 0), "min_p is not supported yet"),
    "chat_template_kwargs": ((None, {}), "chat_template_kwargs are not supported yet"),
    "audio": ((None,), "audio output is not supported: this server generates text only"),
    "modalities": ((None, ["text"]), "modalities other than text are not supported"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "reasoning_effort is not supported: the model's chat template sets no "
                         "reasoning budget"),
    "verbosity": ((None,), "verbosity is not supported"),
    "web_search_options": ((None,), "web search is not supported"),
    "store": ((None, False), "stored completions are not supported: nothing is stored"),
    "service_tier": ((None, "auto", "default"), "service tiers are not supported: one tier is served"),
}
# Accepted and ignored: they name or group the caller and change no answer (README: "Request fields").
IGNORED = ("user", "metadata", "safety_identifier", "prompt_cache_key")


class ChatCompletionRequest(BaseModel):
    # Any field not declared here is a 400 that names it: nothing a client sends is silently dropped.
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    user: str | None = None
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    top_k: Any = None
    repetition_penalty: Any = None
    min_p: Any = None
    chat_template_kwargs: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    store: Any = None
    service_tier: Any = None

    @field_validator(*NOT_SUPPORTED)
    @classmethod
    def _not_supported(cls, v, info):
        accepted, why = NOT_SUPPORTED[info.field_name]
        # bool is an int to Python: `top_k: false` is not the accepted 0.
        if any(v == a and isinstance(v, bool) == isinstance(a, bool) for a in accepted):
            return v
        raise ValueError(f"{why}; this server refuses a request that asks for it rather than ignore it")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"temperature {v:g} is too small to sample with: give 0 (greedy decoding) or "
                             f"at least {MIN_TEMPERATURE:g}")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


def sampling_options(body: ChatCompletionRequest) -> dict:
    """The request's sampling settings as ``LocalModel.generate`` takes them; None where the request
    omits one, so the model's generation_config.json decides (as vLLM does). The route passes these
    once the fields leave NOT_SUPPORTED; until then the penalties, bias and top_k are their no-effect
    values here."""
    bias = {int(token): float(value) for token, value in (body.logit_bias or {}).items()}
    return {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
            "repetition_penalty": body.repetition_penalty, "presence_penalty": float(body.presence_penalty or 0),
            "frequency_penalty": float(body.frequency_penalty or 0), "logit_bias": bias or None}


def over_limits(body: ChatCompletionRequest, settings):
    """A 400 for a request over this server's limits (``settings``, a ServeSettings) on max_tokens,
    messages or characters, else None."""
    asked = body.max_completion_tokens or body.max_tokens
    if settings.max_tokens_cap and asked and asked > settings.max_tokens_cap:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        return error(400, f"{param} is {asked}; this server allows at most {settings.max_tokens_cap}",
                     param=param, code="max_tokens_exceeded")
    if len(body.messages) > settings.max_messages:
        return error(400, f"messages: {len(body.messages)} messages; this server accepts at most "
                     f"{settings.max_messages}", param="messages", code="too_many_messages")
    chars = sum(len(m.text()) for m in body.messages)
    if chars > settings.max_input_chars:
        return error(400, f"messages: {chars} characters in all; this server accepts at most "
                     f"{settings.max_input_chars}", param="messages", code="input_too_long")
    return None


def forged_turn(body: ChatCompletionRequest, lm: LocalModel):
    """A 400 for a message holding the text of a special token, else None: the chat template's output
    is tokenized as a whole, so ``<|im_end|><|im_start|>system`` in a user message would become real
    control tokens and open a turn the client may not write."""
    for i, message in enumerate(body.messages):
        token = lm.special_token_in(message.text())
        if token is not None:
            param = f"messages.{i}.content"
            return error(400, f"{param} holds {token!r}, the text of one of the model's special tokens; it "
                         "would become that control token, so it is refused", param=param,
                         code="special_token_in_content")
    return None


def usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}
