"""oig.eval.compare: the judged comparison with the previous model, against a local judge server that
answers verdicts (readable, biased, unreadable, failing)."""

import json
import re

import pytest
from servers import Response

from oig.data.config import JudgeConfig
from oig.eval import stats
from oig.eval.compare import comparer, judged_comparison

PROMPTS = {  # case id -> (question, new model's answer, previous model's answer)
    "win": ("q-win", "good: Paris", "bad: Lyon"),
    "loss": ("q-loss", "bad: 5", "good: 4"),
    "tie": ("q-tie", "good: yes", "good: yes indeed"),
    "biased": ("q-biased", "good: blue", "bad: green"),
    "unreadable": ("q-unreadable", "good: 7", "bad: 8"),
    "same": ("q-same", "good: ok", "good: ok"),
    "fails": ("q-fails", "good: a", "bad: b"),
    "win2": ("q-win2", "good: 12", "bad: 13"),
}


def judge_server(req):
    """A judge that prefers the answer starting 'good', except where the question says otherwise."""
    body = json.loads(req.body)
    user = body["messages"][-1]["content"]
    first = re.search(r"<answer_A>\n(.*?)\n</answer_A>", user, re.S).group(1)
    second = re.search(r"<answer_B>\n(.*?)\n</answer_B>", user, re.S).group(1)
    if "q-fails" in user:
        return Response(400, {"error": {"message": "the judge model is not available"}})
    if "q-unreadable" in user and first.startswith("bad"):
        text = "Answer A, I suppose."  # no JSON in one of the two orders
    elif "q-biased" in user:
        text = '{"winner": "A", "rationale": "the first one"}'
    elif "q-tie" in user:
        text = '```json\n{"winner": "tie", "rationale": "both right"}\n```'
    else:
        text = json.dumps({"winner": "A" if first.startswith("good") else "B", "rationale": "it is right"})
    assert second
    return {"id": "c1", "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.fixture
def judge(local_server):
    server = local_server({"POST /v1/chat/completions": judge_server})
    return server, JudgeConfig(model="judge-7b", base_url=server.url)


def run(judge_config, names=tuple(PROMPTS)):
    prompts = [[{"role": "user", "content": PROMPTS[n][0]}] for n in names]
    return judged_comparison(prompts, [PROMPTS[n][1] for n in names], [PROMPTS[n][2] for n in names],
                             judge_config, ids=list(names), concurrency=2, suite="chat")


def test_win_rate_counts_ties_half_and_reports_what_it_could_not_read(judge):
    server, config = judge
    result = run(config)
    by_id = {p["id"]: p for p in result["pairs"]}
    assert {i: p["winner"] for i, p in by_id.items()} == {
        "win": "new", "loss": "previous", "tie": "tie", "biased": "tie", "unreadable": None, "same": "tie",
        "fails": None, "win2": "new"}
    assert {k: result[k] for k in ("pairs_judged", "wins", "losses", "ties", "inconsistent", "identical",
                                   "unreadable", "failed", "skipped")} == {
        "pairs_judged": 6, "wins": 2, "losses": 1, "ties": 3, "inconsistent": 1, "identical": 1,
        "unreadable": 1, "failed": 1, "skipped": 0}
    assert result["win_rate"] == round((2 + 3 / 2) / 6, 4)  # 0.5833
    assert result["ci95"] == stats.wilson(3.5, 6)
    assert result["ci_method"].startswith("wilson")
    assert (result["suite"], result["judge"]) == ("chat", "judge-7b")
    # What the judge could not give is kept with its reason and raw output.
    assert by_id["unreadable"]["status"] == "unreadable" and "no JSON object" in by_id["unreadable"]["error"]
    assert "Answer A, I suppose." in by_id["unreadable"]["raw"]
    assert by_id["fails"]["status"] == "failed" and "not available" in by_id["fails"]["error"]
    assert by_id["biased"]["consistent"] is False and by_id["biased"]["verdicts"] == [1.0, 0.0]


def test_every_pair_is_judged_in_both_orders(judge):
    server, config = judge
    run(config, ("win",))
    shown = []
    for req in server.requests:
        body = json.loads(req.body)
        assert body["model"] == "judge-7b"
        user = body["messages"][-1]["content"]
        shown.append(re.search(r"<answer_A>\n(.*?)\n</answer_A>", user, re.S).group(1))
    assert sorted(shown) == ["bad: Lyon", "good: Paris"]


def test_identical_answers_need_no_judge_and_nothing_readable_gives_no_rate(judge):
    server, config = judge
    result = run(config, ("same",))
    assert server.requests == [] and (result["win_rate"], result["ties"]) == (1 / 2, 1)
    result = run(config, ("unreadable", "fails"))
    assert (result["win_rate"], result["ci95"], result["pairs_judged"]) == (None, None, 0)
    assert (result["unreadable"], result["failed"]) == (1, 1)


def test_the_run_eval_hook_takes_both_models_answers_from_the_results(judge):
    from oig.data.evals import Case, Suite

    server, config = judge
    cases = tuple(Case(id=n, messages=({"role": "user", "content": PROMPTS[n][0]},), check="judge")
                  for n in ("win", "loss", "win2"))
    suite = Suite(name="chat", path=None, cases=cases)
    results = {"suites": {"chat": {
        "results": [{"id": n, "answer": PROMPTS[n][1]} for n in ("win", "loss", "win2")],
        "previous": {"results": [{"id": n, "answer": PROMPTS[n][2]} for n in ("win", "loss", "win2")]}}}}
    result = comparer(suite, config)(results)
    assert (result["wins"], result["losses"], result["win_rate"]) == (2, 1, round(2 / 3, 4))
    with pytest.raises(Exception, match="Eval.compare: true"):
        comparer(suite, config)({"suites": {"chat": {"results": [], "previous": None}}})
