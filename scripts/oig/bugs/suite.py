"""Bug reports as a regression suite: judging answers, verdicts, asking models, running the suite.
Reading reports and lists of bugs is ``oig.bugs.report``; how results look and what is safe to post,
``oig.bugs.render``; the GitHub side (the report check on each issue, results after training),
``oig.bugs.github``; what data PRs claim to fix, ``oig.bugs.claims``.

Judging an answer against a bug's expected output uses the shared checker (``oig.checks``) with the
bug's ``check`` (a --bugs entry's ``check:``, the form's *Check* dropdown), in order:

1. the check: by default **similar**, what oig has always done: **equal** after normalisation
   (Unicode NFKC, case folded, runs of whitespace made one space, whitespace and punctuation stripped
   from both ends: "Paris." == "paris"), else difflib's ratio of the normalised texts is at least
   ``threshold`` (default 0.9; bounded in time for long texts). A bug may ask for **exact**,
   **contains** ("Paris" passes "The capital of France is Paris.") or **regex** (the expected output
   is a Python regular expression) instead;
2. else the optional **judge model** decides (an OpenAI-compatible endpoint asked for
   ``{"pass": bool}``); an answer it does not give in that form is unknown, never a crash;
3. else the answer fails.

A bug without an expected output fails when the answer equals the reported bad output after
normalisation, and is otherwise unknown unless the judge model decides.

Verdicts, from the judgments of the answer before (the previous model's; without one, the output the
reporter saw) and after (the new model's):

======================  ===============  ===============
verdict                 before           after
======================  ===============  ===============
``fixed``               fails            passes
``regressed``           passes           fails
``still broken``        fails            fails
``passing``             passes           passes
``unknown``             either is unknown (no expected output, a model that did not answer, ...)
======================  ===============  ===============

The report check on a new issue (``oig bugs report``) has its own rule, :func:`is_reproduced`, and
labels the issue with its outcome (``LABELS``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from oig import checks
from oig.bugs.render import ERROR_LIMIT, short, summarize
from oig.bugs.report import BUG_LABEL, Bug, warn
from oig.checks import normalize, similarity
from oig.errors import OigError, redact
from oig.runlog import ModelRef
from oig.serve import locate, query

# --- labels: the outcomes on issues ------------------------------------------------------------------------

# Set only by the bug report form (bug.yml's `labels:`): the bug-report workflow acts on issues with it,
# not on every issue someone labels `bug`. The label must exist for the form to set it.
REPORT_LABEL = "bug-report"
NEEDS_INFO = "needs-info"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not-reproduced"
FIXED_PREFIX = "fixed-in-"
LABELS = {  # name -> (colour, description) for labels created when missing
    BUG_LABEL: ("d73a4a", "The model gives a wrong answer"),
    REPORT_LABEL: ("c5def5", "Opened with the bug report form; checked by the bug bot"),
    NEEDS_INFO: ("fbca04", "The bug report is missing something; see the bot's comment"),
    REPRODUCED: ("b60205", "The current model still gives a wrong answer"),
    NOT_REPRODUCED: ("0e8a16", "The current model no longer gives the reported answer"),
}
FIXED_COLOR = "1d76db"

DEFAULT_THRESHOLD = checks.DEFAULT_THRESHOLD


# --- judging ---------------------------------------------------------------------------------------------


Judge = Callable[..., "bool | None"]  # judge(input, answer, expected, reported) -> pass, or None


@dataclass(frozen=True)
class Judgment:
    passed: bool | None  # None: unknown
    score: float | None  # similarity to the expected output, when there is one
    how: str  # equal | similar | different | judge | judge gave no verdict | same as reported | ...


def judge_answer(answer: str | None, bug: Bug, *, threshold: float = DEFAULT_THRESHOLD,
                 judge: Judge | None = None) -> Judgment:
    """Whether ``answer`` is right for ``bug`` (see the module doc for the rule)."""
    if answer is None:
        return Judgment(None, None, "no answer")
    if bug.expected is not None:
        kind = bug.check or "similar"
        if kind == "similar":
            similar = checks.similar(answer, bug.expected, threshold)
            score = similar.score
            if similar.passed:
                return Judgment(True, score, "equal" if similar.detail == "equal" else "similar")
        else:
            score = None if kind == "regex" else round(similarity(normalize(answer), normalize(bug.expected)), 4)
            if checks.check(kind, answer, bug.expected).passed:
                return Judgment(True, score, kind)
        if judge is not None:
            verdict = _ask_judge(judge, bug, answer)
            return Judgment(verdict, score, "judge" if verdict is not None else "judge gave no verdict")
        return Judgment(False, score, "different")
    if judge is not None:
        verdict = _ask_judge(judge, bug, answer)
        if verdict is not None:
            return Judgment(verdict, None, "judge")
    if bug.output is not None and normalize(answer) == normalize(bug.output):
        return Judgment(False, None, "same as reported")
    return Judgment(None, None, "no expected output")


def _ask_judge(judge: Judge, bug: Bug, answer: str) -> bool | None:
    try:
        verdict = judge(bug.input, answer, bug.expected, bug.output)
    except Exception as exc:  # a judge is advisory: its failure makes the verdict unknown, not the run fail
        warn(f"the judge model failed on bug #{bug.number}: {redact(str(exc))[:200]}")
        return None
    return verdict if isinstance(verdict, bool) else None


def verdict_of(before: bool | None, after: bool | None) -> str:
    if before is None or after is None:
        return "unknown"
    return {(False, True): "fixed", (True, False): "regressed", (False, False): "still broken",
            (True, True): "passing"}[(before, after)]


JUDGE_SYSTEM = (
    "You grade one answer of a chat model. Reply with JSON only, no other text: {\"pass\": true} when the "
    "answer is correct and acceptable for the user's message, otherwise {\"pass\": false}."
)


def judge_prompt(text: str, answer: str, expected: str | None, reported: str | None) -> str:
    parts = [f"User's message:\n<<<\n{text}\n>>>"]
    if expected is not None:
        parts.append(f"A correct answer (the wording may differ):\n<<<\n{expected}\n>>>")
    elif reported is not None:
        parts.append(f"A user reported this earlier answer as wrong:\n<<<\n{reported}\n>>>")
    parts.append(f"Answer to grade:\n<<<\n{answer}\n>>>")
    parts.append('Reply with {"pass": true} or {"pass": false}.')
    return "\n\n".join(parts)


def parse_judge_reply(reply: object) -> bool | None:
    """The ``pass`` of the first JSON object in the reply that has a boolean one; else None."""
    return next((obj["pass"] for obj in checks.json_objects(reply) if isinstance(obj.get("pass"), bool)), None)


def make_judge(model: str, base_url: str | None = None, *, timeout: float = 60.0) -> Judge:
    """A judge asking ``model`` through the together SDK (Together, or any OpenAI-compatible server at
    ``base_url``, such as ``oig serve``). The key is TOGETHER_API_KEY; a local server needs none."""
    from oig import together_client as together_api

    key = os.environ.get("TOGETHER_API_KEY", "").strip() or ("unused" if base_url else None)
    client = together_api.make_client(base_url, key=key, max_retries=1, timeout=timeout)

    def judge(text: str, answer: str, expected: str | None, reported: str | None) -> bool | None:
        response = together_api.call("asking the judge model", lambda: client.chat.completions.create(
            model=model, max_tokens=32, temperature=0,
            messages=[{"role": "system", "content": JUDGE_SYSTEM},
                      {"role": "user", "content": judge_prompt(text, answer, expected, reported)}]))
        try:
            reply = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            return None
        return parse_judge_reply(reply)

    return judge


def is_reproduced(bug: Bug, answer: str, *, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """The rule of the report check: reproduced when the current answer does not match the expected
    output; with no expected output, when it equals the reported bad output after normalisation."""
    if bug.expected is not None:
        return judge_answer(answer, bug, threshold=threshold).passed is False
    return bug.output is not None and normalize(answer) == normalize(bug.output)


# --- the suite -------------------------------------------------------------------------------------------


def _ask(ask: Callable[[str], str], bug: Bug) -> tuple[str | None, str | None]:
    """(answer, error): one model call; a failure is recorded, not raised, so one bug cannot stop the suite."""
    try:
        answer = ask(bug.input)
    except Exception as exc:
        return None, redact(f"{type(exc).__name__}: {exc}")[:ERROR_LIMIT]
    if not isinstance(answer, str):
        return None, f"the model returned {type(answer).__name__}, not text"
    return answer, None


def run_suite(bugs: Iterable[Bug], ask_before: Callable[[str], str] | None, ask_after: Callable[[str], str],
              judge: Judge | None = None, *, threshold: float = DEFAULT_THRESHOLD) -> list[dict]:
    """Ask each bug's input of the previous and the new model, judge both answers, give a verdict.

    Without ``ask_before`` (no previous model), the answer before is the output the reporter saw.
    Returns one record per bug: number, title, input, expected, reported, before, before_source, after,
    before_pass, after_pass, verdict, score (the new answer's similarity to the expected output) and,
    when a model failed, error. Texts are cut to SHOWN_LIMIT characters; judging uses them whole.
    """
    records = []
    for bug in bugs:
        errors = []
        if ask_before is not None:
            before, error = _ask(ask_before, bug)
            source = "previous model"
            if error:
                errors.append(f"previous model: {error}")
        else:
            before, source = bug.output, "reported"
        after, error = _ask(ask_after, bug)
        if error:
            errors.append(f"new model: {error}")
        was = judge_answer(before, bug, threshold=threshold, judge=judge)
        now = judge_answer(after, bug, threshold=threshold, judge=judge)
        record = {
            "number": bug.number,
            "title": bug.title,
            "input": short(bug.input),
            "expected": short(bug.expected),
            "reported": short(bug.output),
            "before": short(before),
            "before_source": source,
            "after": short(after),
            "before_pass": was.passed,
            "after_pass": now.passed,
            "verdict": verdict_of(was.passed, now.passed),
            "score": now.score,
            "judged": now.how,
        }
        if errors:
            record["error"] = "; ".join(errors)
        records.append(record)
    return records


def log_section(records: list[dict]) -> dict:
    """What ``oig train`` merges into training_log: ``bugs`` (the records) and ``bugs_summary``."""
    return {"bugs": records, "bugs_summary": summarize(records)}


# --- asking models ---------------------------------------------------------------------------------------


def model_asker(model_yaml: Path, base_url: str | None = None, *, max_tokens: int = 256) -> Callable[[str], str]:
    """Ask the model that ``model_yaml`` names (``oig.serve.locate``), greedily.

    model.yaml is read now, so an asker made before ``oig train`` rewrites it keeps asking the previous
    model. A local or Hub model is loaded once, at the first question, not once per bug. With
    ``base_url`` each question goes to that server, as ``oig query --base-url`` sends it.
    """
    model_yaml = Path(model_yaml)
    if base_url:
        return lambda text: query.query(text, model_yaml=model_yaml, base_url=base_url, max_tokens=max_tokens)
    return section_asker(locate.read(model_yaml), model_yaml.parent, max_tokens=max_tokens)


def section_asker(model: ModelRef | dict, base_dir: Path = Path("."), *, max_tokens: int = 256) -> Callable[[str], str]:
    """Ask a model given as a ModelRef or as publishing's ``model`` section (``together`` inside): its
    Together endpoint, else its local folder (relative to ``base_dir``) or Hub repo, loaded at the first
    question. ``section_asker({"local_path": str(model_dir)})`` asks a model that was just saved."""
    if isinstance(model, dict):
        model = ModelRef.from_section(model)
    located: list = []

    def ask(text: str) -> str:
        if not located:  # a model that is not here fails its first question, recorded like any failure
            located.append(query.asker(locate.locate(model, Path(base_dir)), max_tokens=max_tokens))
        return located[0]([{"role": "user", "content": text}])

    return ask


def evaluate(bugs: list[Bug], model_yaml: Path, *, compare: Path | None = None, judge: Judge | None = None,
             threshold: float = DEFAULT_THRESHOLD, base_url: str | None = None) -> list[dict]:
    """``oig bugs eval``: the suite against the model in ``model_yaml``; before is the model in
    ``compare`` when given, else the output each reporter saw. A model that cannot answer the first
    bug (one that cannot be loaded, a server that is down) is an OigError, not a suite of unknowns."""
    after = _answering(model_asker(model_yaml, base_url), bugs, model_yaml)
    before = _answering(model_asker(compare, base_url), bugs, compare) if compare is not None else None
    return run_suite(bugs, before, after, judge, threshold=threshold)


def _answering(ask: Callable[[str], str], bugs: list[Bug], source: Path) -> Callable[[str], str]:
    """``ask``, checked on the first bug now; that answer is kept for the suite's own question."""
    if not bugs:
        return ask
    first = bugs[0].input
    answer, error = _ask(ask, bugs[0])
    if error:
        raise OigError(f"the model in {source} cannot be asked: {error}")
    kept = [answer]

    def ask_again(text: str) -> str:
        if kept and text == first:
            return kept.pop()
        return ask(text)

    return ask_again
