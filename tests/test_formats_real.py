"""Real data formats from contributors: OpenAI function calling accepted and trained with the chat
template's tool rendering; multimodal rows and control-token text refused row by row, with the fix.

The files are in tests/data/formats/ (see its README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from oig.data.fetch import SourceOptions
from oig.data.formats import convert_openai_line, convert_row
from oig.data.slices import HFEntry, JsonlEntry, Slice
from oig.data.sources import materialize
from oig.errors import InvalidInput
from oig.records import check_messages

FORMATS = Path(__file__).parent / "data" / "formats"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FORMATS / name).read_text(encoding="utf-8").splitlines()]


def materialize_local(tmp_path, **sections):
    s = Slice(name="real", path=tmp_path / "data" / "real.yaml", **sections)
    return s, materialize(s, SourceOptions(base_dir=tmp_path, allow_local=True, cache_dir=tmp_path / "cache"))


def problems(tmp_path, **sections) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        materialize_local(tmp_path, **sections)
    return [p.message for p in info.value.problems]


# --- OpenAI function calling ---------------------------------------------------------------------


def test_openai_tool_calls_convert_to_the_template_shape():
    chat, last_call, legacy, no_user = (convert_openai_line(r) for r in rows("openai_tools.jsonl"))
    weather = rows("openai_tools.jsonl")[0]["tools"][0]
    assert chat["tools"] == [weather] and list(chat) == ["messages", "tools"]  # messages first: mixwriter's splice
    assert chat["messages"][2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "call_1"}]}
    assert chat["messages"][3] == {"role": "tool", "content": '{"temp_c": 18}', "tool_call_id": "call_1"}
    assert last_call["messages"][-1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert last_call["messages"][-1]["weight"] == 1
    # Legacy functions / function_call / role "function" become tools / tool_calls / tool.
    assert legacy["tools"] == [weather]
    assert legacy["messages"][1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]
    assert legacy["messages"][2] == {"role": "tool", "content": '{"temp_c": 25}', "name": "get_weather"}
    assert no_user == {"messages": [{"role": "system", "content": "Write a haiku about rain."},
                                    {"role": "assistant", "content": "Soft rain on the roof"}]}
    assert all(check_messages(r["messages"]) is None for r in (chat, last_call, legacy, no_user))


@pytest.mark.parametrize(("row", "message"), [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, "are not valid JSON"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
      "tools": [{"type": "function", "function": {"description": "no name"}}]}, "tool 0 has no function name"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"},
                   {"role": "assistant", "content": "y"}]}, "answers no assistant tool call"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "tool_calls": []}]},
     "`tool_calls` must be a non-empty list"),
])
def test_bad_tool_rows_say_why(row, message):
    with pytest.raises(ValueError, match=message):
        convert_row(row, None)


def test_a_linked_openai_tools_file_materializes(tmp_path):
    shutil.copy(FORMATS / "openai_tools.jsonl", tmp_path / "tools.jsonl")
    _, m = materialize_local(tmp_path, openai_jsonl=[JsonlEntry(link="tools.jsonl")])
    lines = [json.loads(line) for line in m.path.read_text(encoding="utf-8").splitlines()]
    assert m.count == 4 and lines[0]["tools"][0]["function"]["name"] == "get_weather"
    assert all(line.startswith('{"messages":[') for line in m.path.read_text(encoding="utf-8").splitlines())


# --- multimodal rows and control tokens: refused, row by row -------------------------------------


def test_multimodal_rows_are_refused_with_the_row_and_the_fix(tmp_path):
    shutil.copy(FORMATS / "multimodal.jsonl", tmp_path / "mm.jsonl")
    found = problems(tmp_path, openai_jsonl=[JsonlEntry(link="mm.jsonl")])
    assert len(found) == 3
    assert found[0].startswith("OpenAIJsonl[0] mm.jsonl: line 1: the row has an `images` column")
    assert found[1].startswith("OpenAIJsonl[0] mm.jsonl: line 2: message 0 has a image_url content part")
    assert found[2].startswith("OpenAIJsonl[0] mm.jsonl: line 3: the row has an `audio` column")
    assert all("text-only models" in m and "drop such rows" in m for m in found)


def test_an_image_placeholder_without_the_column_is_refused():
    row = {"messages": [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]}
    with pytest.raises(ValueError, match="message 0 has a <image> placeholder: this is a multimodal row"):
        convert_row(row, None)


def test_end_of_text_tokens_in_linked_rows_are_refused(tmp_path):
    shutil.copy(FORMATS / "control_tokens.jsonl", tmp_path / "ct.jsonl")
    found = problems(tmp_path, openai_jsonl=[JsonlEntry(link="ct.jsonl")])
    assert found == [
        "OpenAIJsonl[0] ct.jsonl: line 1: message 1 contains '<|endoftext|>', which chat templates read as a "
        "control token (it would end the answer or forge a turn); remove it from the data",
        "OpenAIJsonl[0] ct.jsonl: line 2: message 1 contains '</s>', which chat templates read as a "
        "control token (it would end the answer or forge a turn); remove it from the data",
    ]


def test_hf_rows_with_images_and_end_of_text_are_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    hf_rows = [{"question": "What is shown?", "answer": "A cat.", "images": ["cat.png"]},
               {"question": "Hi", "answer": "Hello<|endoftext|>", "images": None},
               {"question": "Bye", "answer": "Bye</s>", "images": None},
               {"question": "Ok", "answer": "Fine.", "images": None}]
    (tmp_path / "ds" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hf_rows), encoding="utf-8")
    found = problems(tmp_path, huggingface=[HFEntry(link="ds")])
    assert [m.split(": ", 2)[1] for m in found] == ["train.jsonl line 1", "train.jsonl line 2", "train.jsonl line 3"]
    assert "`images` column" in found[0] and "'<|endoftext|>'" in found[1] and "'</s>'" in found[2]


# --- training on tool calls ----------------------------------------------------------------------


def test_tiny_template_renders_tools_and_calls():
    pytest.importorskip("transformers")
    from oig.train import tiny

    chat = convert_openai_line(rows("openai_tools.jsonl")[0])
    tok = tiny.build_tokenizer(tiny.texts_of([chat]))
    text = tok.apply_chat_template(chat["messages"], tools=chat["tools"], tokenize=False)
    assert text.startswith('<|im_start|>system\n# Tools\n{"name": "get_weather", "description"')
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>\n<|im_start|>tool\n{\"temp_c\": 18}<|im_end|>\n") in text
    # Without tools the rendering is the plain ChatML it always was.
    plain = tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                    tokenize=False)
    assert plain == "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"


def test_training_on_a_tool_call_row_learns_the_call(tmp_path):
    pytest.importorskip("trl")
    from oig.data.config import TrainingConfig
    from oig.train import masking, tiny
    from oig.train.args import sft_config
    from oig.train.sft import make_trainer

    records = [{"slice": "tools", **convert_openai_line(r)} for r in rows("openai_tools.jsonl")]
    model, tok = tiny.build_tiny(tiny.texts_of(records), tmp_path / "tiny", seed=1)
    ds, dropped = masking.to_dataset(records, tok, tok.chat_template)
    assert dropped == 0 and len(ds) == 4
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    learned = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    assert learned == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
                       "It is 18 C in Paris.<|im_end|>")  # the call and the answer; not the tools or the result
    config = TrainingConfig(path=Path("training.yaml"), training={"max_steps": 3}, seed=42, oig={})
    args, _ = sft_config(config, tmp_path / "out", on_gpu=False, has_eval=False)
    trainer = make_trainer(model, tok, args, ds, None, config)
    batch = next(iter(trainer.get_train_dataloader()))
    assert any((row != -100).any() for row in batch["labels"])
    result = trainer.train()
    assert result.global_step == 3 and result.training_loss > 0


def test_a_template_that_cannot_render_tools_is_a_clear_error(tmp_path):
    pytest.importorskip("trl")
    from oig.train import masking, tiny

    records = [{"slice": "tools", **convert_openai_line(rows("openai_tools.jsonl")[0])}]
    tok = tiny.build_tokenizer(tiny.texts_of(records))
    plain = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] "
             "+ '<|im_end|>\\n' }}{%- endfor %}")
    with pytest.raises(masking.MaskingError, match="slice 'tools' has tool calls .* does not render them "
                       "\\('get_weather' is missing") as info:
        masking.to_dataset(records, tok, plain)
    from oig.train.errors import TrainError

    assert isinstance(info.value, TrainError)


def test_hub_tool_rows_from_parquet_with_tools_as_a_json_string(tmp_path):
    # Hub function-calling sets often keep `tools` as a JSON string; parquet gives every message every field.
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = rows("openai_tools.jsonl")[0]
    messages = [{"role": m["role"], "content": m.get("content"), "tool_calls": m.get("tool_calls"),
                 "tool_call_id": m.get("tool_call_id")} for m in chat["messages"]]
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.Table.from_pylist([{"messages": messages, "tools": json.dumps(chat["tools"])}]),
                   tmp_path / "ds" / "train.parquet")
    _, m = materialize_local(tmp_path, huggingface=[HFEntry(link="ds")])
    [line] = [json.loads(x) for x in m.path.read_text(encoding="utf-8").splitlines()]
    assert line == convert_openai_line(chat)


def test_html_audio_and_video_elements_are_text():
    row = {"question": "Embed a clip?", "answer": "Use <video src=\"a.mp4\" controls> or <audio>."}
    assert convert_row(row, None)["messages"][1]["content"].startswith("Use <video")


def test_qwen_template_learns_the_tool_call_with_and_without_generation_markers():
    trl = pytest.importorskip("trl")
    from oig.train import masking, tiny

    record = {"slice": "tools", **convert_openai_line(rows("openai_tools.jsonl")[0])}
    tok = tiny.build_tokenizer(tiny.texts_of([record]))
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    template = masking.training_template(tok)
    for t in (template, tok.chat_template):  # TRL's training version, or growing prefixes of Qwen's own
        ds, _ = masking.to_dataset([record], tok, t)
        ids, labels = ds[0]["input_ids"], ds[0]["labels"]
        text = tok.decode(ids)
        assert "# Tools" in text and '"name": "get_weather"' in text
        learned = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in learned
        assert "It is 18 C in Paris." in learned and "temp_c" not in learned and "Weather in Paris" not in learned


@pytest.mark.slow
def test_oig_train_on_a_linked_tool_calling_file(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from oig.cli import main

    (tmp_path / "data").mkdir()
    shutil.copy(FORMATS / "openai_tools.jsonl", tmp_path / "tools.jsonl")
    (tmp_path / "data" / "tools.yaml").write_text("# Tool calling rows (test)\nOpenAIJsonl:\n  - link: tools.jsonl\n")
    (tmp_path / "training.yaml").write_text("Training:\n  eval_size: 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OIG_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["mix", "--out", "mix", "--allow-local-sources"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "mix" / "mixture.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum("tools" in line for line in lines) >= 3
    assert main(["train", "--base-model", "tiny", "--publish", "none", "--mixture", "mix", "--output", "run"]) == 0


def test_control_tokens_in_tool_calls_and_tools_are_refused_at_conversion_and_before_training():
    chat = rows("openai_tools.jsonl")[0]
    forged = json.loads(json.dumps(chat))
    forged["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris<|im_end|>"}'
    with pytest.raises(ValueError, match="message 2 contains '<\\\\|im_end\\\\|>'"):
        convert_row(forged, None)
    forged = json.loads(json.dumps(chat))
    forged["tools"][0]["function"]["description"] = "weather</s>"
    with pytest.raises(ValueError, match="`tools` contains '</s>'"):
        convert_row(forged, None)

    pytest.importorskip("transformers")
    from oig.train import masking, tiny

    record = {"slice": "tools", **convert_openai_line(chat)}
    tok = tiny.build_tokenizer(tiny.texts_of([record]))
    assert masking.special_token_text([record], tok) is None
    record["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"city": "<|im_start|>"}
    assert masking.special_token_text([record], tok) == (1, ["tools"], "<|im_start|>")
    record["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    record["tools"][0]["function"]["description"] = "<|im_end|>"
    assert masking.special_token_text([record], tok) == (1, ["tools"], "<|im_end|>")


def test_llama_factory_sharegpt_function_calls():
    [row] = rows("sharegpt_tools.jsonl")
    [chat] = [convert_openai_line(r) for r in rows("openai_tools.jsonl")[:1]]
    assert convert_row(row, None) == {
        "messages": [{"role": "user", "content": "Weather in Lima?"},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lima"}}}]},
                     {"role": "tool", "content": '{"temp_c": 20}'},
                     {"role": "assistant", "content": "20 C in Lima."}],
        "tools": chat["tools"]}
    bad = {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "get_weather"}]}
    with pytest.raises(ValueError, match="message 1 is a function_call turn whose value is not a JSON call"):
        convert_row(bad, None)
