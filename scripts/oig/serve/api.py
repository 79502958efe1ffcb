"""The OpenAI wire format of ``oig serve``: the routes, the request models (pydantic), the error shape
``{"error": {"message", "type", "param", "code"}}``, and the checks a parsed request must pass before
the model sees it (this server's limits, and no message holding a special token's text)."""

# No `from __future__ import annotations`: FastAPI reads the request model from the route's real
# annotations, and pydantic the models' fields.
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from oig.serve.inference import Generation

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


class CalledFunction(BaseModel):
    # extra: the SDK's own message objects, sent back as they came, carry `parsed_arguments` (a copy).
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str  # JSON, as OpenAI sends it

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, v):
        try:
            parsed = json.loads(v)
        except ValueError:
            raise ValueError("arguments must be a JSON object (a string holding one)") from None
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object (a string holding one)")
        return v


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` on a user turn, `refusal`: nothing the model reads
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn's answer to one of them
    function_call: Any = None

    @model_validator(mode="before")
    @classmethod
    def _roles(cls, v):
        # OpenAI's `developer` role is its newer name for `system` (oig's data converter maps it so too).
        if isinstance(v, dict) and v.get("role") == "developer":
            v = {**v, "role": "system"}
        return v

    @field_validator("role", mode="before")
    @classmethod
    def _function_role(cls, v):
        if v == "function":
            raise ValueError("function messages are OpenAI's deprecated form: send the result as a tool "
                             "message (role tool, tool_call_id)")
        return v

    @field_validator("function_call")
    @classmethod
    def _function_call(cls, v):
        if v:
            raise ValueError("function_call is OpenAI's deprecated form: send the assistant's calls as tool_calls")
        return v

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on an assistant turn with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant turn has tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self) -> dict:
        """The message as chat templates read it: tool calls with their arguments as objects."""
        out: dict = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # the arguments of a forced call always follow `parameters`


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition

    def for_template(self) -> dict:
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the answer always follows the schema


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type json_schema, and only then")
        return self


# Fields of OpenAI's (and vLLM's) chat-completions request this server cannot honour, each with its
# value that means "no effect" (accepted) and what a client asking for more would miss. Any other value is
# a 400 naming the field: a client that asks for an effect is told it will not get one. README: "Request
# fields".
NOT_SUPPORTED: dict[str, tuple[tuple, str]] = {
    "functions": ((None, []), "functions (OpenAI's deprecated form of tools) is not supported: send tools"),
    "function_call": ((None, "none"), "function_call (OpenAI's deprecated form of tool_choice) is not supported: "
                      "send tool_choice"),
    "audio": ((None,), "audio output is not supported: this server generates text only"),
    "moderation": ((None,), "moderation is not supported: no moderation model runs here"),
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
# The prompt-cache hints ask to keep a prefix cached; this server keeps none, and answers the same.
IGNORED = ("user", "metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_options",
           "prompt_cache_retention")


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
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=300)
    # vLLM's sampling extras: top_k -1 or 0 is no top-k.
    top_k: int | None = Field(default=None, ge=-1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    min_p: float | None = Field(default=None, ge=0, le=1)
    chat_template_kwargs: dict[str, Any] | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    moderation: Any = None
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

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        for token, bias in (v or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids (as strings of digits), not {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {token} is {bias:g}; biases are from -100 to 100")
        return v

    def tool_mode(self) -> str | None:
        """None (no tools in play), "auto" (the model may call), "required" or a function's name."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"


def combination_problem(body: ChatCompletionRequest) -> tuple[str, str] | None:
    """(param, message) for fields that cannot go together, else None."""
    if body.top_logprobs is not None and not body.logprobs:
        return "top_logprobs", "top_logprobs needs logprobs: true"
    if body.tool_choice is not None and body.tool_choice != "none" and not body.tools:
        return "tool_choice", "tool_choice needs tools to choose from"
    if isinstance(body.tool_choice, NamedToolChoice):
        names = [t.function.name for t in body.tools]
        if body.tool_choice.function.name not in names:
            return "tool_choice", (f"tool_choice names {body.tool_choice.function.name!r}, which is not one of the "
                                   f"tools ({', '.join(names)})")
    forced = body.tools and body.tool_choice not in (None, "none", "auto")
    if forced and body.response_format is not None and body.response_format.type != "text":
        return "response_format", ("response_format and a forced tool call cannot both shape one answer: the "
                                   "call's arguments already follow the function's parameters schema")
    return None


def sampling_options(body: ChatCompletionRequest) -> dict:
    """The request's sampling settings as ``LocalModel.generate`` takes them; None where the request
    omits one, so the model's generation_config.json decides (as vLLM does)."""
    bias = {int(token): float(value) for token, value in (body.logit_bias or {}).items()}
    return {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k, "min_p": body.min_p,
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


def usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}
