"""Whether an answer is right: the one checker for eval cases (``oig eval``) and bug reports (``oig bugs``).

Every check compares the model's answer with a reference, after this **normalisation** (``normalize``):
Unicode NFKC, case folded, runs of whitespace made one space, whitespace and punctuation stripped from
both ends ("  Paris. " and "paris" are the same).

============ ===================================================================================
check        passes when
============ ===================================================================================
``exact``    the normalised answer equals the normalised reference
``contains`` the normalised reference occurs in the normalised answer ("Paris" in "The capital is
             Paris.")
``regex``    the reference, a Python regular expression, matches somewhere in the answer (``re.search``
             on the NFKC answer, not case folded: write ``(?i)`` to ignore case)
``choice``   multiple choice: the first standalone capital letter of the answer that names one of the
             choices (A, B, ... one per choice; "I" in "I think B" is skipped when there are fewer than
             nine choices) is the reference letter
``similar``  ``exact``, else difflib's ratio of the normalised texts is at least ``threshold`` (0.9):
             what bug reports have always used, and still their default
``judge``    a judge model, given the question, the answer, the reference (if any) and a rubric,
             replies ``{"pass": true|false}`` or ``{"score": 1-10}`` (passing at ``pass_score``, 7 by
             default). A reply in neither form is **unreadable**: ``None``, never a pass or a fail
============ ===================================================================================

Nothing here asks a model: the judge is a callable (a conversation -> the judge's reply text).
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

KINDS = ("exact", "contains", "regex", "choice", "similar", "judge")
BUG_KINDS = ("similar", "exact", "contains", "regex")  # what a bug report may ask for (no choices, no rubric)
DEFAULT_THRESHOLD = 0.9  # similar: difflib ratio
DEFAULT_PASS_SCORE = 7  # judge: a score reply of at least this passes (scores are 1-10)
RATIO_CHARS = 2000  # similar: longer texts are compared on a bound (see similarity)
MAX_CHOICES = 26
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

JudgeAsk = Callable[[list[dict]], str]  # a conversation -> the judge model's reply


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: unreadable (a judge reply in no known form)
    detail: str  # how it was decided, for people: "contains", "similarity 0.93", "judge score 8 >= 7", ...
    score: float | None = None  # similar: the ratio; judge: the score it gave


# --- normalisation -----------------------------------------------------------------------------------------


def _strip_ends(text: str) -> str:
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or unicodedata.category(text[start]).startswith("P")):
        start += 1
    while end > start and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[start:end]


def normalize(text: str) -> str:
    """NFKC, case folded, whitespace runs as one space, whitespace and punctuation off both ends."""
    return _strip_ends(" ".join(unicodedata.normalize("NFKC", text).casefold().split()))


def similarity(a: str, b: str) -> float:
    """difflib's ratio of two normalised texts. Texts over RATIO_CHARS characters score the smaller of
    ``quick_ratio`` over the whole texts and ``ratio`` over their first RATIO_CHARS characters, which
    bounds a comparison to ~0.4 s."""
    if a == b:
        return 1.0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if max(len(a), len(b)) <= RATIO_CHARS:
        return matcher.ratio()
    bound = matcher.quick_ratio()
    head = difflib.SequenceMatcher(None, a[:RATIO_CHARS], b[:RATIO_CHARS], autojunk=False).ratio()
    return min(bound, head)


# --- the pure checks ---------------------------------------------------------------------------------------


def exact(answer: str, reference: str) -> Verdict:
    same = normalize(answer) == normalize(reference)
    return Verdict(same, "equal" if same else "not equal")


def contains(answer: str, reference: str) -> Verdict:
    found = normalize(reference) in normalize(answer)
    return Verdict(found, "contains the reference" if found else "does not contain the reference")


def regex(answer: str, pattern: str) -> Verdict:
    found = re.search(pattern, unicodedata.normalize("NFKC", answer)) is not None
    return Verdict(found, "matches" if found else "does not match")


def chosen_letter(answer: str, n_choices: int) -> str | None:
    """The first standalone capital letter of ``answer`` that names one of ``n_choices`` choices."""
    valid = LETTERS[:n_choices]
    for m in re.finditer(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])", unicodedata.normalize("NFKC", answer)):
        if m.group(1) in valid:
            return m.group(1)
    return None


def choice(answer: str, reference: str, choices: Sequence[str]) -> Verdict:
    letter = chosen_letter(answer, len(choices))
    want = reference.strip().upper()
    if letter is None:
        return Verdict(False, f"no choice letter (A-{LETTERS[len(choices) - 1]}) in the answer")
    return Verdict(letter == want, f"chose {letter}" + ("" if letter == want else f", not {want}"))


def similar(answer: str, reference: str, threshold: float = DEFAULT_THRESHOLD) -> Verdict:
    got, want = normalize(answer), normalize(reference)
    if got == want:
        return Verdict(True, "equal", 1.0)
    score = round(similarity(got, want), 4)
    return Verdict(score >= threshold, f"similarity {score:.2f} {'>=' if score >= threshold else '<'} {threshold:g}",
                   score)


def choices_prompt(text: str, choices: Sequence[str]) -> str:
    """A multiple-choice question as the model is asked it: the text, the lettered choices, the ask."""
    lines = [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return f"{text}\n\n" + "\n".join(lines) + "\n\nAnswer with the letter of the correct choice."


# --- the judge ---------------------------------------------------------------------------------------------

JUDGE_SYSTEM = (
    "You grade one answer of a chat model against a rubric. Reply with JSON only, no other text: "
    "{\"pass\": true} or {\"pass\": false}, or {\"score\": N} with N from 1 (wrong) to 10 (excellent)."
)


def judge_messages(question: str, answer: str, reference: str | None, rubric: str | None) -> list[dict]:
    parts = [f"User's message:\n<<<\n{question}\n>>>"]
    if reference is not None:
        parts.append(f"A correct answer (the wording may differ):\n<<<\n{reference}\n>>>")
    if rubric:
        parts.append(f"Rubric:\n<<<\n{rubric}\n>>>")
    parts.append(f"Answer to grade:\n<<<\n{answer}\n>>>")
    parts.append('Reply with {"pass": true}, {"pass": false} or {"score": N} (1-10).')
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def json_objects(reply: object, scan: int = 20000):
    """Every JSON object a judge's reply holds, in order (prose and code fences around them are skipped;
    only an object starting in the first ``scan`` characters counts)."""
    if not isinstance(reply, str):
        return
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", reply[:scan]):
        try:
            obj, _ = decoder.raw_decode(reply, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_verdict(reply: object, pass_score: float = DEFAULT_PASS_SCORE) -> Verdict:
    """The first JSON object in the reply with a boolean ``pass`` or a number ``score`` from 1 to 10."""
    if isinstance(reply, str):
        for obj in json_objects(reply):
            if isinstance(obj.get("pass"), bool):
                return Verdict(obj["pass"], f"judge: {'pass' if obj['pass'] else 'fail'}")
            score = obj.get("score")
            if isinstance(score, int | float) and not isinstance(score, bool) and 1 <= score <= 10:
                ok = score >= pass_score
                return Verdict(ok, f"judge score {score:g} {'>=' if ok else '<'} {pass_score:g}", float(score))
    shown = reply[:80] if isinstance(reply, str) else type(reply).__name__
    return Verdict(None, f"unreadable judge reply: {shown!r}")


def judge(question: str, answer: str, reference: str | None, rubric: str | None, ask: JudgeAsk, *,
          pass_score: float = DEFAULT_PASS_SCORE) -> Verdict:
    """Ask the judge; its reply read by :func:`parse_verdict`. A failing call raises (the caller decides)."""
    return parse_verdict(ask(judge_messages(question, answer, reference, rubric)), pass_score)


# --- one entry point ---------------------------------------------------------------------------------------


def check(kind: str, answer: str, reference: str | None, *, choices: Sequence[str] = (), question: str = "",
          rubric: str | None = None, judge_ask: JudgeAsk | None = None, threshold: float = DEFAULT_THRESHOLD,
          pass_score: float = DEFAULT_PASS_SCORE) -> Verdict:
    """Check ``answer`` with ``kind`` (one of KINDS). Raises ValueError for a check that lacks what it
    needs (a reference, choices, a judge); validation of suites and bug lists catches those first."""
    if kind == "judge":
        if judge_ask is None:
            raise ValueError("the judge check needs a judge model")
        return judge(question, answer, reference, rubric, judge_ask, pass_score=pass_score)
    if kind not in KINDS:
        raise ValueError(f"unknown check {kind!r} (checks: {', '.join(KINDS)})")
    if reference is None:
        raise ValueError(f"the {kind} check needs a reference")
    if kind == "exact":
        return exact(answer, reference)
    if kind == "contains":
        return contains(answer, reference)
    if kind == "regex":
        return regex(answer, reference)
    if kind == "choice":
        if not choices:
            raise ValueError("the choice check needs choices")
        return choice(answer, reference, choices)
    return similar(answer, reference, threshold)
