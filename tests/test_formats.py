"""Converting every source layout into conversations, and reading data files."""

import json

import pytest

from oig.data.formats import (
    BadRow,
    convert_openai_line,
    convert_row,
    detect_layout,
    file_format,
    iter_jsonl,
    iter_rows,
    layout_of_columns,
)


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize(("columns", "layout"), [
    (["messages", "id"], "messages"),
    (["conversations", "source"], "conversations"),
    (["prompt", "completion"], "prompt_completion"),
    (["instruction", "input", "output"], "alpaca"),
    (["instruction", "output"], "alpaca"),
    (["question", "answer", "id"], "question_answer"),
    (["text", "metadata"], "text"),
    (["q", "a"], None),
    (["prompt"], None),
])
def test_detect_layout(columns, layout):
    assert detect_layout(columns) == layout


def test_openai_chat_keeps_system_turns_and_weights():
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris.", "weight": 1},
    ]}
    assert convert_openai_line(row) == row
    assert convert_row(row, None) == row


def test_messages_take_text_parts_and_developer_role_and_drop_null_weight():
    row = {"messages": [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "weight": None},
        {"role": "assistant", "content": "c", "weight": 1.0, "name": "bot"},
    ]}
    assert convert_row(row, None) == {"messages": [
        {"role": "system", "content": "Rules."}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c", "weight": 1}]}


def test_sharegpt_conversations():
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q1"},
                             {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"},
                             {"from": "gpt", "value": "a2"}]}
    assert convert_row(row, None) == msgs(("system", "S"), ("user", "q1"), ("assistant", "a1"),
                                          ("user", "q2"), ("assistant", "a2"))


def test_sharegpt_from_parquet_structs_with_null_role():
    row = {"conversations": [{"from": "human", "value": "q", "role": None, "content": None},
                             {"from": "gpt", "value": "a", "role": None, "content": None}]}
    assert convert_row(row, None) == msgs(("user", "q"), ("assistant", "a"))


def test_prompt_completion_strings_and_message_lists():
    assert convert_row({"prompt": "p", "completion": "c"}, None) == msgs(("user", "p"), ("assistant", "c"))
    assert convert_openai_line({"prompt": "p", "completion": "c"}) == msgs(("user", "p"), ("assistant", "c"))
    row = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
           "completion": [{"role": "assistant", "content": "a"}]}
    assert convert_row(row, None) == msgs(("system", "s"), ("user", "u"), ("assistant", "a"))


def test_alpaca_with_and_without_input():
    assert convert_row({"instruction": "Translate", "input": "chat", "output": "cat"}, None) == msgs(
        ("user", "Translate\n\nchat"), ("assistant", "cat"))
    assert convert_row({"instruction": "Say hi", "input": "", "output": "hi"}, None) == msgs(
        ("user", "Say hi"), ("assistant", "hi"))
    assert convert_row({"instruction": "Say hi", "input": None, "output": "hi"}, None) == msgs(
        ("user", "Say hi"), ("assistant", "hi"))


def test_question_answer_and_system_column():
    row = {"question": "2+2?", "answer": "4", "system": "You are a calculator."}
    assert convert_row(row, None) == msgs(("system", "You are a calculator."), ("user", "2+2?"), ("assistant", "4"))


def test_oig_text_turns():
    row = {"text": "Background: cats.\n<human>: What is a cat?\n<bot>: An animal.\n<human>: Sure?\n<bot>: Yes."}
    assert convert_row(row, None) == msgs(("system", "Background: cats."), ("user", "What is a cat?"),
                                          ("assistant", "An animal."), ("user", "Sure?"), ("assistant", "Yes."))


def test_oig_text_keeps_multiline_turns():
    row = {"text": "<human>: line one\nline two\n<bot>: answer\n\nmore"}
    assert convert_row(row, None) == msgs(("user", "line one\nline two"), ("assistant", "answer\n\nmore"))


def test_explicit_columns():
    row = {"q": "why?", "a": "because", "sys": "S", "messages": "ignored"}
    assert convert_row(row, {"question": "q", "answer": "a", "system": "sys"}) == msgs(
        ("system", "S"), ("user", "why?"), ("assistant", "because"))
    assert convert_row({"chat": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
                       {"messages": "chat"}) == msgs(("user", "u"), ("assistant", "a"))
    assert convert_row({"body": "<human>: x\n<bot>: y"}, {"text": "body"}) == msgs(("user", "x"), ("assistant", "y"))
    # A partial mapping: the other role keeps its usual column name.
    assert convert_row({"query": "q", "completion": "c"}, {"prompt": "query"}) == msgs(("user", "q"), ("assistant", "c"))


def test_layout_of_columns_refuses_a_mix():
    assert layout_of_columns({"question": "q", "answer": "a"}) == "question_answer"
    assert layout_of_columns({"system": "s"}) is None
    with pytest.raises(ValueError, match="mixes the roles of two layouts"):
        layout_of_columns({"question": "q", "output": "o"})


BAD_ROWS = {
    "not-object": ([1, 2], None, "must be an object"),
    "unknown-layout": ({"q": "x", "a": "y"}, None, "no known layout in columns (q, a)"),
    "missing-mapped": ({"q": "x"}, {"question": "q", "answer": "a"}, "no column 'a' for answer"),
    "number-text": ({"question": 3, "answer": "y"}, None, "column 'question' is a number, not text"),
    "null-answer": ({"question": "x", "answer": None}, None, "column 'answer' is empty"),
    "empty-answer": ({"question": "x", "answer": "  "}, None, "the last assistant message is empty"),
    "bad-role": ({"messages": [{"role": "wizard", "content": "x"}]}, None, "role 'wizard'"),
    "tool": ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "{}"},
                           {"role": "assistant", "content": "y"}]}, None, "answers no assistant tool call"),
    "tool-calls": ({"messages": [{"role": "user", "content": "x"},
                                 {"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}]}, None,
                   "tool call without a function name"),
    "bad-weight": ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]},
                   None, "weight 2; expected 0 or 1"),
    "user-weight": ({"messages": [{"role": "user", "content": "x", "weight": 1}, {"role": "assistant", "content": "y"}]},
                    None, "only assistant messages take weight"),
    "ends-with-user": ({"messages": [{"role": "user", "content": "x"}]}, None, "must end with an assistant message"),
    "no-user": ({"messages": [{"role": "assistant", "content": "x"}]}, None, "a user or system message before"),
    "late-system": ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},
                                  {"role": "assistant", "content": "y"}]}, None, "system message after"),
    "empty-list": ({"messages": []}, None, "non-empty list of messages"),
    "image": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                            {"role": "assistant", "content": "y"}]}, None, "image_url content part"),
    "no-turns": ({"text": "just prose"}, None, "no <human>:/<bot>: turns"),
    "message-not-object": ({"conversations": ["hi"]}, None, "message 0 is text"),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_bad_rows_give_a_reason(name):
    row, columns, message = BAD_ROWS[name]
    with pytest.raises(ValueError) as info:
        convert_row(row, columns)
    assert message in str(info.value)


def test_openai_lines_are_chat_or_prompt_completion_only():
    with pytest.raises(ValueError, match="expected an OpenAI fine-tuning line"):
        convert_openai_line({"question": "q", "answer": "a"})


def test_jsonl_reports_bad_lines_in_place(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": \n\xff\xfe\n' + b"[" * 100_000 + b"\n" + b'{"a": 2}')
    rows = list(iter_jsonl(path))
    assert [w for w, _ in rows] == ["line 1", "line 3", "line 4", "line 5", "line 6"]
    assert rows[0][1] == {"a": 1} and rows[4][1] == {"a": 2}
    assert isinstance(rows[1][1], BadRow) and "not valid JSON" in str(rows[1][1])
    assert isinstance(rows[2][1], BadRow) and "not UTF-8" in str(rows[2][1])
    assert isinstance(rows[3][1], BadRow) and "nested too deeply" in str(rows[3][1])


def test_jsonl_line_length_limit(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b'"' + b"x" * 200 + b'"\n')
    with pytest.raises(ValueError, match="line 2 is longer than 100 bytes"):
        list(iter_jsonl(path, max_line_bytes=100))


def test_json_array_csv_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    (tmp_path / "a.csv").write_text("question,answer\nq1,\"a, with comma\"\n", encoding="utf-8")
    pq.write_table(pa.table({"question": ["q"] * 2500, "answer": ["a"] * 2500}), tmp_path / "a.parquet")
    assert list(iter_rows(tmp_path / "a.json", "json")) == [("row 1", {"question": "q", "answer": "a"})]
    assert list(iter_rows(tmp_path / "a.csv", "csv")) == [("row 1", {"question": "q1", "answer": "a, with comma"})]
    rows = list(iter_rows(tmp_path / "a.parquet", "parquet"))
    assert len(rows) == 2500 and rows[-1] == ("row 2500", {"question": "q", "answer": "a"})


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        list(iter_rows(tmp_path / "bad.parquet", "parquet"))
    (tmp_path / "bad.csv").write_bytes(b"question,answer\nq,a\ncaf\xe9,x\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        list(iter_rows(tmp_path / "bad.csv", "csv"))
    (tmp_path / "extra.csv").write_text("question,answer\nq,a,extra\n")
    with pytest.raises(ValueError, match="row 1 has more fields than the header"):
        list(iter_rows(tmp_path / "extra.csv", "csv"))


def test_file_format():
    assert [file_format(n) for n in ("a.parquet", "b.JSONL", "c.json", "d.csv", "e.txt", "f.jsonl.gz")] == [
        "parquet", "jsonl", "json", "csv", None, None]
