"""kind: vllm: vLLM's offline engine (a stub of its interface: LLM.chat, SamplingParams, structured output)
planned, batched, stored and exported like any provider."""

from __future__ import annotations

import sys
import types

import pytest
from fake_openai import smart
from test_generate_run import lines, records, run, write_rows

from oig.cli import main
from oig.errors import InvalidInput, OigError
from oig.generate.config import load_config


class StubLLM:
    """vllm.LLM's interface: LLM(model=..., **options).chat(conversations, sampling_params=[...])."""

    made: list[StubLLM] = []
    fail_load: str | None = None

    def __init__(self, model: str, **options):
        if StubLLM.fail_load:
            raise OSError(StubLLM.fail_load)
        self.model, self.options, self.calls = model, options, []
        StubLLM.made.append(self)

    def chat(self, conversations, sampling_params, use_tqdm=True):
        self.calls.append((conversations, sampling_params))
        out = []
        for i, messages in enumerate(conversations):
            text = smart({"model": self.model, "messages": messages})
            out.append(types.SimpleNamespace(request_id=str(i), prompt_token_ids=[1] * 7, outputs=[
                types.SimpleNamespace(text=text, finish_reason="stop", token_ids=[2] * (len(text) // 4 + 1))]))
        return out


class Params:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def stub_vllm(monkeypatch):
    StubLLM.made, StubLLM.fail_load = [], None
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = StubLLM, Params
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = type("StructuredOutputsParams", (Params,), {})
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    return sp


def vllm_config(tmp_path, *, provider_extra: str = "", judges: bool = True):
    write_rows(tmp_path / "rows.jsonl", [{"prompt": f"question {i}"} for i in range(6)])
    judge = "judges:\n  - kind: score\n    model: org/judge-7b\n    provider: gpu\n" if judges else ""
    path = tmp_path / "gen.yaml"
    path.write_text(f"""
instructions:
  - link: rows.jsonl
license: CC0-1.0
providers:
  gpu:
    kind: vllm
    tensor_parallel_size: 1
    gpu_memory_utilization: 0.3
{provider_extra}
models:
  - model: org/small-1b
    provider: gpu
    temperature: 0.7
    max_tokens: 64
  - model: org/a-much-longer-model-3b
    provider: gpu
{judge}
""")
    return path


def test_vllm_models_answer_and_judge_through_llm_chat(tmp_path, stub_vllm):
    summary = run(vllm_config(tmp_path), tmp_path / "out")
    engines = {e.model: e for e in StubLLM.made}
    assert sorted(engines) == ["org/a-much-longer-model-3b", "org/judge-7b", "org/small-1b"]  # one engine per model id
    assert all(e.options == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.3} for e in engines.values())
    # Calls gathered: each model's 6 conversations went to the engine in one LLM.chat call.
    small = engines["org/small-1b"]
    assert [len(c) for c, _ in small.calls] == [6]
    assert small.calls[0][1][0].kwargs == {"temperature": 0.7, "max_tokens": 64}
    judge_params = engines["org/judge-7b"].calls[0][1][0]
    schema = judge_params.kwargs["structured_outputs"].kwargs["json"]  # the verdict's JSON Schema
    assert judge_params.kwargs["temperature"] == 0 and schema["required"] == ["scores", "rationale"]
    recs = records(tmp_path / "out")
    assert recs[0]["responses"][0]["text"] == "[org/small-1b] question 0"
    assert recs[0]["responses"][0]["usage"]["prompt_tokens"] == 7
    assert all(r["best"] is not None for r in recs) and summary.response_errors == 0
    assert len(lines(tmp_path / "out" / "sft.jsonl")) == 6 and len(lines(tmp_path / "out" / "prefs.jsonl")) == 6
    # The same store as any provider: a rerun asks the engine nothing.
    StubLLM.made = []
    again = run(vllm_config(tmp_path), tmp_path / "out")
    assert StubLLM.made == [] and again.stats["calls"] == 0 and again.stats["stored"] == summary.stats["calls"]


def test_a_batch_size_splits_the_engine_calls(tmp_path, stub_vllm):
    run(vllm_config(tmp_path, provider_extra="    batch_size: 4\n", judges=False), tmp_path / "out")
    assert [len(c) for c, _ in StubLLM.made[0].calls] == [4, 2]


def test_older_vllm_gets_guided_decoding(tmp_path, stub_vllm):
    del stub_vllm.StructuredOutputsParams
    stub_vllm.GuidedDecodingParams = type("GuidedDecodingParams", (Params,), {})
    run(vllm_config(tmp_path), tmp_path / "out")
    judge = next(e for e in StubLLM.made if e.model == "org/judge-7b")
    assert "guided_decoding" in judge.calls[0][1][0].kwargs


def test_dry_run_plans_vllm_calls_without_loading_an_engine(tmp_path, stub_vllm, capsys):
    cfg = vllm_config(tmp_path)
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Total: 24 calls to make" in out and StubLLM.made == []  # 6 x 2 answers + 12 verdicts


def test_an_engine_that_cannot_load_stops_the_run_with_one_message(tmp_path, stub_vllm, capsys):
    StubLLM.fail_load = "no CUDA GPUs are available"
    cfg = vllm_config(tmp_path, judges=False)
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources"]) == 1
    err = capsys.readouterr().err
    assert "vLLM cannot load org/" in err and "no CUDA GPUs are available" in err and "Traceback" not in err


def test_without_vllm_installed_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, as where it is not installed
    from oig.generate import local

    monkeypatch.setattr(local, "installed", lambda: False)
    with pytest.raises(OigError, match="vLLM is not installed here; install vLLM on a GPU machine"):
        run(vllm_config(tmp_path), tmp_path / "out")


def test_http_settings_do_not_apply_to_vllm_nor_engine_options_to_servers(tmp_path):
    cfg = vllm_config(tmp_path, provider_extra="    base_url: http://127.0.0.1:8000\n    poll_s: 3\n")
    with pytest.raises(InvalidInput) as err:
        load_config(cfg)
    messages = [p.message for p in err.value.problems]
    assert any("`base_url` does not apply to kind vllm" in m for m in messages)
    assert any("`poll_s` does not apply to kind vllm" in m for m in messages)
    cfg.write_text(cfg.read_text().replace("kind: vllm", "kind: openai").replace("    poll_s: 3\n", ""))
    with pytest.raises(InvalidInput) as err:
        load_config(cfg)
    assert any("`tensor_parallel_size` applies to kind vllm only" in p.message for p in err.value.problems)
