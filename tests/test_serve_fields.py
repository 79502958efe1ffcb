"""oig serve against OpenAI's chat-completions request, field by field: each field is honoured (a 200
whose answer shows it) or refused (a 400 whose `param` names it), never accepted and dropped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_serve import ANSWER, QUESTION, train_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
ASK = {"model": "tiny-test", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 20}

# OpenAI's chat-completions request, as the official SDK (a dev dependency, locked) sends it: the
# parameters of client.chat.completions.create, less the SDK's own transport options.
def _openai_fields() -> list[str]:
    import inspect

    from openai.resources.chat.completions import Completions

    own = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
    return [name for name in inspect.signature(Completions.create).parameters if name not in own]


OPENAI_FIELDS = _openai_fields()
VLLM_FIELDS = ["top_k", "repetition_penalty", "min_p", "chat_template_kwargs"]

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
# A value asking for an effect this server does not give: each must be a 400 naming the field.
REFUSED = {
    "audio": {"voice": "alloy", "format": "wav"},
    "moderation": {"policy": {"input": {"mode": "block"}}},
    "function_call": "auto",
    "functions": [TOOL["function"]],
    "modalities": ["text", "audio"],
    "n": 2,
    "prediction": {"type": "content", "content": "Paris"},
    "reasoning_effort": "high",
    "service_tier": "flex",
    "store": True,
    "verbosity": "low",
    "web_search_options": {},
}
CHOICE = {"type": "object", "properties": {"capital": {"type": "string", "enum": ["Paris", "Rome"]},
                                           "sure": {"type": "boolean"}},
          "required": ["capital", "sure"], "additionalProperties": False}
# Named in the README's "Request fields" as accepted and ignored: they label the caller, not the answer.
IGNORED = {"user": "alice", "metadata": {"team": "eval"}, "safety_identifier": "u-123", "prompt_cache_key": "k1",
           "prompt_cache_options": {"ttl": "1h"}, "prompt_cache_retention": "24h"}


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    from fastapi.testclient import TestClient

    from oig.serve.inference import LocalModel
    from oig.serve.server import ServeSettings, create_app

    lm = LocalModel.load(train_tiny(tmp_path_factory.mktemp("tiny") / "model"), name="tiny-test")
    with TestClient(create_app(lm, settings=ServeSettings(max_tokens_cap=1000))) as client:
        yield client


def chat(http, **fields):
    return http.post("/v1/chat/completions", json={**ASK, **fields})


def refused_param(response) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error["param"]


def answer(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def sse(response) -> list[dict]:
    assert response.status_code == 200, response.text
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_the_walk_covers_every_field_the_request_model_declares():
    from oig.serve.api import ChatCompletionRequest

    walked = set(OPENAI_FIELDS) | set(VLLM_FIELDS)
    assert set(ChatCompletionRequest.model_fields) == walked
    assert set(REFUSED) | set(IGNORED) | set(HONOURED) == walked


def _stop(http):
    assert answer(chat(http, stop=["ris"]))["choices"][0]["message"]["content"] == ANSWER[: ANSWER.index("ris")]


def _max_tokens(field):
    def check(http):
        body = answer(chat(http, **{field: 1}))
        assert body["usage"]["completion_tokens"] == 1 and body["choices"][0]["finish_reason"] == "length"
    return check


def _stream(http):
    chunks = sse(chat(http, stream=True))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == ANSWER


def _stream_options(http):
    chunks = sse(chat(http, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def _seed(http):
    texts = {answer(chat(http, temperature=2, seed=7))["choices"][0]["message"]["content"] for _ in range(2)}
    assert len(texts) == 1


def _temperature(http):
    # The default (1) samples; 0 is greedy and gives the trained answer every time.
    assert answer(chat(http, temperature=0))["choices"][0]["message"]["content"] == ANSWER


def _top_p(http):
    # Sampling from the smallest nucleus is the most likely token each step: the greedy answer.
    assert answer(chat(http, temperature=2, top_p=0.01))["choices"][0]["message"]["content"] == ANSWER


def _model(http):
    response = chat(http, model="gpt-4")
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


def _messages(http):
    body = answer(chat(http, messages=[{"role": "user", "content": "Say hello"}]))
    assert body["choices"][0]["message"]["content"] == "Hello there!"


def _reaches(field, value, **expected):
    """The field's value reaches LocalModel.job, which both ways of generating go through (its effect the
    tests below check), and the answer is a 200."""
    def check(http):
        lm = http.app.state.slot.model
        seen: dict = {}
        generate = lm.job

        def spy(*args, **kwargs):
            seen.update(kwargs)
            return generate(*args, **kwargs)

        lm.job = spy
        try:
            answer(chat(http, **{field: value}))
        finally:
            del lm.job
        assert {k: seen.get(k) for k in expected} == expected
    return check


def _logit_bias(http):
    lm = http.app.state.slot.model
    paris = lm.tokenizer.encode("Paris", add_special_tokens=False)[0]
    text = answer(chat(http, messages=[{"role": "user", "content": QUESTION}], logit_bias={str(paris): -100}))
    assert "Paris" not in text["choices"][0]["message"]["content"]
    assert refused_param(chat(http, logit_bias={"10000000": 5})) == "logit_bias"
    assert refused_param(chat(http, logit_bias={"a": 5})) == "logit_bias"


def _logprobs(http):
    body = answer(chat(http, logprobs=True))
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] and all(e["top_logprobs"] == [] for e in content)
    assert answer(chat(http))["choices"][0]["logprobs"] is None


def _top_logprobs(http):
    content = answer(chat(http, logprobs=True, top_logprobs=3))["choices"][0]["logprobs"]["content"]
    assert content and all(len(e["top_logprobs"]) == 3 for e in content)
    assert refused_param(chat(http, top_logprobs=3)) == "top_logprobs"  # without logprobs: true


def _greedy_through(field, value):
    # Sampling hot (temperature 2) through the narrowest filter is the most likely token each step.
    def check(http):
        assert answer(chat(http, temperature=2, **{field: value}))["choices"][0]["message"]["content"] == ANSWER
    return check


def _chat_template_kwargs(http):
    response = chat(http, chat_template_kwargs={"enable_thinking": False})  # the tiny template reads no such thing
    assert refused_param(response) == "chat_template_kwargs" and "enable_thinking" in response.text


def _response_format(http):
    body = answer(chat(http, max_tokens=60, response_format={
        "type": "json_schema", "json_schema": {"name": "capital", "schema": CHOICE, "strict": True}}))
    got = json.loads(body["choices"][0]["message"]["content"])
    assert set(got) == {"capital", "sure"} and got["capital"] in ("Paris", "Rome") and isinstance(got["sure"], bool)


def _tools(http):
    plain, with_tools = answer(chat(http)), answer(chat(http, tools=[TOOL]))
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]  # the template rendered them
    assert with_tools["choices"][0]["finish_reason"] == "stop"


def _tool_choice(http):
    body = answer(chat(http, tools=[TOOL], tool_choice="required", max_tokens=600))  # up to 8 calls
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert calls and {c["function"]["name"] for c in calls} == {"weather"}
    assert all(isinstance(json.loads(c["function"]["arguments"]), dict) and c["id"] for c in calls)


def _parallel_tool_calls(http):
    body = answer(chat(http, tools=[TOOL], tool_choice="required", parallel_tool_calls=False, max_tokens=60))
    assert len(body["choices"][0]["message"]["tool_calls"]) == 1


HONOURED = {"messages": _messages, "model": _model, "max_tokens": _max_tokens("max_tokens"),
            "max_completion_tokens": _max_tokens("max_completion_tokens"), "stop": _stop, "stream": _stream,
            "stream_options": _stream_options, "seed": _seed, "temperature": _temperature, "top_p": _top_p,
            "logit_bias": _logit_bias, "logprobs": _logprobs, "top_logprobs": _top_logprobs,
            "top_k": _greedy_through("top_k", 1), "min_p": _greedy_through("min_p", 1.0),
            "presence_penalty": _reaches("presence_penalty", 1.5, presence_penalty=1.5),
            "frequency_penalty": _reaches("frequency_penalty", -0.5, frequency_penalty=-0.5),
            "repetition_penalty": _reaches("repetition_penalty", 1.3, repetition_penalty=1.3),
            "chat_template_kwargs": _chat_template_kwargs, "response_format": _response_format,
            "tools": _tools, "tool_choice": _tool_choice, "parallel_tool_calls": _parallel_tool_calls}


@pytest.mark.parametrize("field", sorted(HONOURED))
def test_an_honoured_field_shows_in_the_answer(http, field):
    HONOURED[field](http)


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_a_field_the_server_cannot_honour_is_a_400_naming_it(http, field):
    response = chat(http, **{field: REFUSED[field]})
    assert refused_param(response) == field
    message = response.json()["error"]["message"]
    assert message.startswith(f"{field}: ")
    assert "not supported" in message or field == "n"  # n: "less than or equal to 1", one choice per request


@pytest.mark.parametrize("field", sorted(IGNORED))
def test_a_field_that_labels_the_caller_is_accepted_and_listed_in_the_readme(http, field):
    assert answer(chat(http, **{field: IGNORED[field]}))["choices"][0]["message"]["content"] == ANSWER
    section = (REPO / "README.md").read_text().split("#### Request fields", 1)[1].split("\n#", 1)[0]
    assert re.search(rf"^\|[^\n]*`{field}`[^\n]*accepted and ignored", section, re.M), field


@pytest.mark.parametrize("field,value", [("response_format", {"type": "text"}), ("logprobs", False),
                                         ("presence_penalty", 0), ("frequency_penalty", 0.0), ("tools", []),
                                         ("tool_choice", "none"), ("store", False), ("top_k", -1),
                                         ("repetition_penalty", 1.0), ("n", 1), ("modalities", ["text"])])
def test_a_value_that_asks_for_nothing_is_accepted(http, field, value):
    assert answer(chat(http, **{field: value}))["choices"][0]["message"]["content"] == ANSWER


def test_a_field_outside_the_schema_is_a_400_naming_it(http):
    assert refused_param(chat(http, best_of=3)) == "best_of"
    assert refused_param(chat(http, logprobs=0)) == "logprobs"  # not false: a bool is asked for


def test_developer_role_is_a_system_message(http):
    as_developer = chat(http, messages=[{"role": "developer", "content": "Be brief."},
                                        {"role": "user", "content": QUESTION}])
    as_system = chat(http, messages=[{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": QUESTION}])
    assert answer(as_developer)["usage"] == answer(as_system)["usage"]
    assert answer(as_developer)["choices"] == answer(as_system)["choices"]


def test_tool_turns_in_the_history_reach_the_template(http, monkeypatch):
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    history = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    short = answer(chat(http, messages=history[:1], tools=[TOOL]))
    long = answer(chat(http, messages=history, tools=[TOOL]))
    assert long["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 10  # the call and its result
    bad = {**call, "function": {"name": "weather", "arguments": "[1]"}}
    assert refused_param(chat(http, messages=[history[0], {**history[1], "tool_calls": [bad]}])).startswith(
        "messages.1.tool_calls.0.function.arguments")
    assert refused_param(chat(http, messages=[{"role": "tool", "content": "sunny"}])) == "messages.0"
    # A template that cannot render tools: a 400 saying so, not a prompt that silently lost them.
    lm = http.app.state.slot.model
    monkeypatch.setattr(lm.tokenizer, "chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}")
    response = chat(http, messages=history)
    assert refused_param(response) == "messages" and "does not render tools" in response.text
    assert refused_param(chat(http, tools=[TOOL])) == "tools"


def test_a_named_tool_choice_gives_that_functions_arguments(http):
    weather = {"type": "function", "function": {"name": "weather", "parameters": CHOICE}}
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    body = answer(chat(http, tools=[weather, other], max_tokens=60,
                       tool_choice={"type": "function", "function": {"name": "weather"}}))
    (call,) = body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "weather" and json.loads(call["function"]["arguments"])["capital"] in (
        "Paris", "Rome")
    assert refused_param(chat(http, tools=[weather], tool_choice={"type": "function",
                                                                  "function": {"name": "nope"}})) == "tool_choice"
    assert refused_param(chat(http, tool_choice="required")) == "tool_choice"  # no tools to choose from
    both = chat(http, tools=[weather], tool_choice="required", response_format={"type": "json_object"})
    assert refused_param(both) == "response_format"


def test_a_json_schema_the_grammar_cannot_follow_is_a_400(http):
    response = chat(http, response_format={"type": "json_schema",
                                           "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert refused_param(response) == "response_format.json_schema.schema"


# --- LocalModel's sampling settings (the server, `oig query` and the bug suite answer through it) -----


@pytest.fixture(scope="module")
def lm(http):
    return http.app.state.slot.model


def test_an_omitted_temperature_comes_from_the_models_generation_config(lm, tmp_path, monkeypatch):
    import copy
    import shutil

    from oig.serve.inference import LocalModel

    # A model shipped greedy: its generation_config.json says do_sample false, temperature 0.
    folder = Path(shutil.copytree(lm.model.name_or_path, tmp_path / "greedy"))
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "do_sample": False, "temperature": 0.0}))
    greedy = LocalModel.load(folder, name="greedy")
    assert greedy.sampling().greedy
    assert [greedy.complete([{"role": "user", "content": QUESTION}], seed=s)[0] for s in range(3)] == [ANSWER] * 3

    shipped = copy.deepcopy(lm.model.generation_config)
    for key, value in {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20,
                       "repetition_penalty": 1.1}.items():
        setattr(shipped, key, value)
    monkeypatch.setattr(lm.model, "generation_config", shipped)
    got = lm.sampling()
    assert (got.temperature, got.top_p, got.top_k, got.repetition_penalty) == (0.7, 0.9, 20, 1.1)
    asked = lm.sampling(temperature=1.5, top_p=0.5, top_k=-1, repetition_penalty=1.0)
    assert (asked.temperature, asked.top_p, asked.top_k, asked.repetition_penalty) == (1.5, 0.5, 0, 1.0)
    shipped = copy.deepcopy(shipped)
    shipped.do_sample, shipped.temperature, shipped.top_p, shipped.top_k, shipped.repetition_penalty = (
        None, None, None, None, None)
    monkeypatch.setattr(lm.model, "generation_config", shipped)
    got = lm.sampling()  # the file sets none of them: plain sampling
    assert (got.greedy, got.temperature, got.top_p, got.top_k) == (False, 1.0, 1.0, 0)


def first_word(lm, **options) -> str:
    return lm.complete([{"role": "user", "content": QUESTION}], temperature=0, max_tokens=1, **options)[0]


def test_logit_bias_and_openai_penalties_change_the_greedy_answer(lm):
    from oig.serve.inference import BadRequest

    greedy = lm.complete([{"role": "user", "content": QUESTION}], temperature=0)[0]
    assert greedy == ANSWER
    paris, hello = (lm.tokenizer.encode(word, add_special_tokens=False)[0] for word in ("Paris", "Hello"))
    assert first_word(lm) == "Paris"
    assert first_word(lm, logit_bias={paris: -100}) != "Paris"
    assert first_word(lm, logit_bias={hello: 100}) == "Hello"
    with pytest.raises(BadRequest) as info:
        lm.complete([{"role": "user", "content": QUESTION}], logit_bias={10**9: 5})
    assert info.value.param == "logit_bias"
    # Kept from ending, greedy decoding repeats itself; a frequency or presence penalty of 1e4 forbids
    # any generated token a second time.
    never_end = {lm.tokenizer.eos_token_id: -100}
    for penalty, repeats in ((None, True), ("frequency_penalty", False), ("presence_penalty", False)):
        options = {penalty: 1e4} if penalty else {}
        text = lm.complete([{"role": "user", "content": QUESTION}], temperature=0, max_tokens=6,
                           logit_bias=never_end, **options)[0]
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        assert (len(ids) != len(set(ids))) is repeats, (penalty, text)


def test_openai_penalties_follow_the_documented_formula():
    import torch

    from oig.serve.processors import OpenAIPenalties

    penalties = OpenAIPenalties(presence=0.5, frequency=2.0, prompt_length=3)
    prompt = torch.tensor([[3, 3, 3]])  # the prompt does not count
    assert torch.equal(penalties(prompt, torch.zeros(1, 5)), torch.zeros(1, 5))
    scores = penalties(torch.tensor([[3, 3, 3, 1, 4, 1]]), torch.zeros(1, 5))
    # token 1 twice: 2*2 + 0.5; token 4 once: 2 + 0.5; the rest untouched.
    assert scores.tolist() == [[0.0, -4.5, 0.0, 0.0, -2.5]]


def test_sampling_options_leave_what_the_request_omits_to_the_model(lm):
    from oig.serve.api import ChatCompletionRequest, sampling_options

    omitted = sampling_options(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}]))
    assert omitted == {"temperature": None, "top_p": None, "top_k": None, "min_p": None, "repetition_penalty": None,
                       "presence_penalty": 0.0, "frequency_penalty": 0.0, "logit_bias": None}
    del omitted["logit_bias"]
    assert lm.sampling(**omitted).greedy  # the tiny model's generation_config.json: greedy
    asked = sampling_options(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                                   temperature=0.5, top_p=0.5))
    assert (asked["temperature"], asked["top_p"]) == (0.5, 0.5)


def test_logprobs_are_openai_shaped_one_entry_per_generated_token(lm):
    from oig.serve.inference import Generation

    result = Generation()
    text, _ = lm.complete([{"role": "user", "content": QUESTION}], temperature=0, logprobs=3, result=result)
    assert text == ANSWER and len(result.logprobs) == result.completion_tokens
    for entry in result.logprobs:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode()) and entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        # Greedy decoding chose the most likely token: the first alternative, at the same log-probability.
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])
    assert "".join(e["token"] for e in result.logprobs).startswith(ANSWER)
    none = Generation()
    lm.complete([{"role": "user", "content": QUESTION}], temperature=0, logprobs=0, result=none)
    assert [e["top_logprobs"] for e in none.logprobs] == [[]] * none.completion_tokens
    untouched = Generation()
    lm.complete([{"role": "user", "content": QUESTION}], temperature=0, result=untouched)
    assert untouched.logprobs == []


def test_chat_template_kwargs_reach_only_variables_the_template_reads(lm, monkeypatch):
    from oig.serve.inference import BadRequest

    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(BadRequest) as info:
        lm.encode(hi, {"enable_thinking": False})  # the tiny ChatML template reads no such thing
    assert info.value.param == "chat_template_kwargs" and "enable_thinking" in str(info.value)
    with pytest.raises(BadRequest):
        lm.encode(hi, {"add_generation_prompt": False})  # transformers' own, not the client's
    assert lm.renders_tools()  # the tiny template renders tools as Qwen2.5 does
    thinking = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n{% if not enable_thinking %}<think></think>{% endif %}")
    monkeypatch.setattr(lm.tokenizer, "chat_template", thinking)
    plain, without = lm.encode(hi), lm.encode(hi, {"enable_thinking": True})
    assert len(plain) > len(without)  # the variable reached the template
    assert not lm.renders_tools()
