"""oig serve through LangChain's OpenAI chat model (langchain-openai, a dev dependency), the way the
issue that asked for honest compatibility found it broken: ``with_structured_output`` by function
calling and by JSON schema gives the pydantic object, plain and streamed answers come through, and a
refused field is LangChain's error with the field named. Nothing here counts tokens, so tiktoken
(which would download its encodings) is never asked."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel
from test_serve import ANSWER, QUESTION, ServerThread, model_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai (a dev dependency) is not installed")


class Capital(BaseModel):
    """The capital of a country."""

    capital: Literal["Paris", "Rome", "Ottawa"]
    sure: bool


@pytest.fixture(scope="module")
def chat(model_dir, tmp_path_factory, monkeypatch_module):  # noqa: F811
    from oig.serve.inference import LocalModel
    from oig.serve.server import create_app

    # No LangSmith tracing, and a tiktoken cache that is empty: a download would fail the test.
    monkeypatch_module.setenv("LANGSMITH_TRACING", "false")
    monkeypatch_module.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken")))
    lm = LocalModel.load(model_dir, name="tiny-test")
    with ServerThread(create_app(lm)) as s:
        yield langchain_openai.ChatOpenAI(model="tiny-test", base_url=f"{s.url}/v1", api_key="unused",
                                          temperature=0, max_tokens=80, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_plain_and_a_streamed_answer(chat):
    reply = chat.invoke(QUESTION)
    assert reply.content == ANSWER and reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["output_tokens"] > 0
    pieces = [chunk.content for chunk in chat.stream(QUESTION)]
    assert len(pieces) > 1 and "".join(pieces) == ANSWER


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_gives_the_pydantic_object(chat, method):
    # The report: by function calling, LangChain got None (tool_choice was dropped, prose came back).
    parsed = chat.with_structured_output(Capital, method=method).invoke(QUESTION)
    assert isinstance(parsed, Capital) and parsed.capital in ("Paris", "Rome", "Ottawa")
    raw = chat.with_structured_output(Capital, method=method, include_raw=True).invoke(QUESTION)
    assert raw["parsing_error"] is None and raw["parsed"] == parsed


def test_a_refused_field_is_an_error_naming_it(chat):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        chat.bind(n=2).invoke(QUESTION)
    assert refused.value.status_code == 400 and refused.value.body["param"] == "n"
