"""oig.eval.lmeval: lm-evaluation-harness on the tiny model, with a custom task defined in this repository
(tests/data/lmeval/oig_tiny_mc.yaml and its JSONL), offline."""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from oig.data.config import LmEvalConfig  # noqa: E402
from oig.errors import OigError  # noqa: E402
from oig.eval.lmeval import run_lm_eval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = "tests/data/lmeval"
DOCS = [json.loads(line) for line in (ROOT / TASK_DIR / "oig_tiny_mc.jsonl").read_text().splitlines()]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.chdir(ROOT)  # the task's data_files are relative to the repository root, as for oig eval


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from oig.train.tiny import build_tiny

    texts = [f"Question: {d['question']}\nAnswer: {' '.join(d['choices'])}" for d in DOCS]
    return build_tiny(texts, tmp_path_factory.mktemp("tiny"), seed=0)


def expected_acc(model, tokenizer, docs) -> float:
    """The same accuracy computed here: the choice with the highest log-likelihood after the prompt."""
    import torch

    right = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx_ids), len(whole))))
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    return right / len(docs)


def test_a_custom_task_from_the_repository_gives_a_real_accuracy(offline, tiny, one_torch_thread):
    model, tokenizer = tiny
    config = LmEvalConfig(tasks=["oig_tiny_mc"], num_fewshot=0, batch_size=4, include_path=TASK_DIR)
    result = run_lm_eval(model, config, tokenizer=tokenizer, root=ROOT)
    acc = result["tasks"]["oig_tiny_mc"]["acc"]
    assert isinstance(acc, float) and 0 <= acc <= 1
    assert acc == pytest.approx(expected_acc(model, tokenizer, DOCS))
    stderr = result["tasks"]["oig_tiny_mc"]["acc_stderr"]
    assert stderr is None or math.isfinite(stderr)
    assert result["samples"] == {"oig_tiny_mc": len(DOCS)}
    assert result["versions"] == {"oig_tiny_mc": 1.0}
    assert (result["limit"], result["num_fewshot"]) == (None, 0)

    limited = run_lm_eval(model, LmEvalConfig(tasks=["oig_tiny_mc"], limit=3, include_path=TASK_DIR),
                          tokenizer=tokenizer, root=ROOT)
    assert limited["samples"] == {"oig_tiny_mc": 3}
    assert limited["tasks"]["oig_tiny_mc"]["acc"] == pytest.approx(expected_acc(model, tokenizer, DOCS[:3]))


def test_a_missing_task_folder_is_an_error(offline, tiny):
    model, tokenizer = tiny
    with pytest.raises(OigError, match="there is no folder tests/data/nowhere"):
        run_lm_eval(model, LmEvalConfig(tasks=["oig_tiny_mc"], include_path="tests/data/nowhere"),
                    tokenizer=tokenizer, root=ROOT)


def test_an_unknown_task_names_the_nearest_one(offline, tiny):
    model, tokenizer = tiny
    with pytest.raises(OigError, match="unknown lm-eval task 'oig_tiny_mcq'; did you mean 'oig_tiny_mc'"):
        run_lm_eval(model, LmEvalConfig(tasks=["oig_tiny_mcq"], include_path=TASK_DIR), tokenizer=tokenizer,
                    root=ROOT)


def test_oig_eval_runs_the_lm_eval_tasks_training_yaml_names(offline, tiny, one_torch_thread, tmp_path, capsys):
    from oig.cli import main

    model, tokenizer = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = tmp_path / "training.yaml"
    config.write_text(f"Eval:\n  lm_eval:\n    tasks: [oig_tiny_mc]\n    include_path: {TASK_DIR}\n    limit: 4\n")
    suites = tmp_path / "evals"
    suites.mkdir()
    (suites / "one.yaml").write_text("cases:\n  - input: Say hi.\n    reference: hi\n")
    assert main(["eval", "--model", str(folder), "--config", str(config), "--suites", str(suites),
                 "--format", "json", "--max-tokens", "4"]) == 0
    results = json.loads(capsys.readouterr().out)
    task = results["lm_eval"]["tasks"]["oig_tiny_mc"]
    assert isinstance(task["acc"], float) and results["lm_eval"]["limit"] == 4
    assert results["suites"]["one"]["cases"] == 1
