"""oig serve through the official `openai` SDK, as clients use it: .parse() with a pydantic model, a
tools round trip, logprobs, streaming (text and tool calls), the vLLM extras through extra_body, and
refusals raised as the SDK's BadRequestError with the field named."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel
from test_serve import ANSWER, QUESTION, ServerThread, model_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
openai = pytest.importorskip("openai", reason="the openai SDK (a dev dependency) is not installed")


class Capital(BaseModel):
    capital: Literal["Paris", "Rome", "Ottawa"]
    sure: bool


class Weather(BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture(scope="module")
def client(model_dir):  # noqa: F811
    from oig.serve.inference import LocalModel
    from oig.serve.server import create_app

    lm = LocalModel.load(model_dir, name="tiny-test")
    with ServerThread(create_app(lm)) as s:
        yield openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=60)


ASK = [{"role": "user", "content": QUESTION}]


def test_a_plain_completion_and_the_model_list(client):
    assert [m.id for m in client.models.list()] == ["tiny-test"]
    reply = client.chat.completions.create(model="tiny-test", messages=ASK, temperature=0)
    assert reply.choices[0].message.content == ANSWER and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.choices[0].logprobs is None


def test_parse_with_a_pydantic_model_gives_that_model(client):
    reply = client.chat.completions.parse(model="tiny-test", messages=ASK, temperature=0, max_tokens=80,
                                          response_format=Capital)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Capital) and parsed.capital in ("Paris", "Rome", "Ottawa")
    assert Capital.model_validate_json(reply.choices[0].message.content) == parsed
    as_object = client.chat.completions.create(model="tiny-test", messages=ASK, temperature=0, max_tokens=40,
                                               response_format={"type": "json_object"})
    assert as_object.choices[0].message.content.lstrip().startswith("{")


def test_a_tools_round_trip(client):
    tools = [openai.pydantic_function_tool(Weather, name="weather")]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.parse(model="tiny-test", messages=ask, tools=tools, max_tokens=80,
                                          tool_choice={"type": "function", "function": {"name": "weather"}})
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.content is None
    (call,) = message.tool_calls
    assert call.function.name == "weather" and isinstance(call.function.parsed_arguments, Weather)
    # The call and the tool's result go back through the chat template; the model answers in text.
    result = {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})}
    second = client.chat.completions.create(model="tiny-test", messages=[*ask, message, result], tools=tools,
                                            temperature=0, max_tokens=20)
    assert second.choices[0].message.tool_calls is None and second.choices[0].message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    required = client.chat.completions.create(model="tiny-test", messages=ask, tools=tools, max_tokens=80,
                                              tool_choice="required", parallel_tool_calls=False)
    assert [c.function.name for c in required.choices[0].message.tool_calls] == ["weather"]


def test_logprobs_and_the_vllm_extras(client):
    reply = client.chat.completions.create(model="tiny-test", messages=ASK, temperature=0, logprobs=True,
                                           top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token for e in content)
    # Hot sampling through top_k 1 is greedy: the trained answer.
    hot = client.chat.completions.create(model="tiny-test", messages=ASK, temperature=2, extra_body={"top_k": 1})
    assert hot.choices[0].message.content == ANSWER
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-test", messages=ASK, extra_body={"chat_template_kwargs":
                                                                                   {"enable_thinking": False}})
    assert info.value.param == "chat_template_kwargs"


def test_streaming_text_usage_and_tool_calls(client):
    stream = client.chat.completions.create(model="tiny-test", messages=ASK, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, logprobs=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER and chunks[-1].usage.completion_tokens > 0
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(streamed) == chunks[-1].usage.completion_tokens
    tools = [openai.pydantic_function_tool(Weather, name="weather")]
    with client.chat.completions.stream(model="tiny-test", messages=[{"role": "user", "content": "Weather?"}],
                                        tools=tools, tool_choice="required", max_tokens=200) as events:
        final = events.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert {c.function.name for c in final.choices[0].message.tool_calls} == {"weather"}


def test_refusals_are_the_sdks_bad_request_errors_naming_the_field(client):
    for fields, param in (({"n": 2}, "n"), ({"store": True}, "store"), ({"audio": {"voice": "alloy"}}, "audio"),
                          ({"top_logprobs": 2}, "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny-test", messages=ASK, **fields)
        assert info.value.param == param, fields
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=ASK)
