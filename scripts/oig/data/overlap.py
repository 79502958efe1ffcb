"""Decontamination: training inputs that overlap a text the model is tested on (an eval case, an open bug).

Two rules, both warnings (never errors: a reviewer decides), each at the slice file's line:

- exact: the two texts are equal after normalisation (``oig.checks.normalize``: NFKC, case folded,
  whitespace runs as one space, whitespace and punctuation stripped at the ends);
- n-gram: at least ``THRESHOLD`` (half) of the reference's 8-word sequences (``NGRAM``; words are
  runs of letters and digits of the normalised text) appear in the training text: the reference is
  mostly contained in it, with a few words changed or more text around it. A reference shorter than
  8 words has no 8-grams and is matched by the exact rule only.

``oig validate`` checks IOPairs inputs against the eval cases' user turns (``evals/*.yaml``, read
with ``oig.data.evals``); ``oig bugs claims`` checks them against the open bugs' inputs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from oig import yamlsafe
from oig.checks import normalize
from oig.errors import Problem

NGRAM = 8  # words in a sequence
THRESHOLD = 0.5  # share of the reference's 8-word sequences found in the training text
_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """The n-word sequences of the normalised text."""
    words = _WORD.findall(normalize(text))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Match:
    label: str  # what was matched: "eval case smoke/capital-germany", "bug #7"
    exact: bool
    containment: float  # share of the reference's n-grams in the text (1.0 for an exact match)

    def describe(self) -> str:
        if self.exact:
            return f"is {self.label}'s input (equal after normalisation)"
        return (f"contains {self.containment:.0%} of the {NGRAM}-word sequences of {self.label}'s input "
                f"(warned at {THRESHOLD:.0%})")


class Index:
    """References to keep out of training, indexed for exact and n-gram look-ups."""

    def __init__(self, references: Iterable[tuple[str, str]]):  # (label, text)
        self.exact: dict[str, str] = {}
        self.sizes: list[int] = []
        self.labels: list[str] = []
        self.by_gram: dict[tuple[str, ...], list[int]] = {}
        for label, text in references:
            self.exact.setdefault(normalize(text), label)
            grams = ngrams(text)
            if grams:
                ref = len(self.labels)
                self.labels.append(label)
                self.sizes.append(len(grams))
                for g in grams:
                    self.by_gram.setdefault(g, []).append(ref)

    def __bool__(self) -> bool:
        return bool(self.exact)

    def match(self, text: str) -> Match | None:
        """The first reference the text overlaps (exact first, then the largest containment)."""
        label = self.exact.get(normalize(text))
        if label is not None:
            return Match(label, True, 1.0)
        hits = Counter(ref for g in ngrams(text) for ref in self.by_gram.get(g, ()))
        best = max(((n / self.sizes[ref], -ref) for ref, n in hits.items()), default=None)
        if best is None or best[0] < THRESHOLD:
            return None
        return Match(self.labels[-best[1]], False, best[0])


def pair_warnings(text: str | Callable[[], str], display: str, io_pairs: list[dict[str, str]], index: Index,
                  message: Callable[[Match], str]) -> list[Problem]:
    """A warning at each IOPairs input that overlaps a reference. ``text``: the slice file (or a function
    that reads it, called only when something overlaps), for the lines."""
    found = []
    for i, pair in enumerate(io_pairs if index else ()):
        m = index.match(pair["input"])
        if m is not None:
            if callable(text):
                text = text()
            line, col = yamlsafe.locate(text, ("IOPairs", i, "input"))
            found.append(Problem(display, line, col, "warning", message(m)))
    return found


def eval_references(evals_dir: Path) -> list[tuple[str, str]]:
    """(label, text) of every user turn of every readable eval case in ``evals_dir`` (broken suites
    are ``oig validate``'s to report, not this check's)."""
    from oig.data import evals

    evals_dir = Path(evals_dir)
    if not evals_dir.is_dir():
        return []
    refs = []
    for path in evals.suite_files(evals_dir):
        suite, _ = evals.read_suite(path)
        for case in suite.cases if suite else ():
            refs += [(f"eval case {suite.name}/{case.id}", m["content"]) for m in case.messages
                     if m["role"] == "user" and m["content"].strip()]
    return refs


def eval_message(m: Match) -> str:
    return (f"this input {m.describe()}: training on it would make that case test memory. Rephrase it or "
            "drop it (or move the case out of evals/)")


class EvalOverlap:
    """``oig validate``'s check: the eval cases in ``evals/`` beside each slice's ``data/`` folder, read once."""

    def __init__(self) -> None:
        self.indexes: dict[Path, Index] = {}

    def warnings(self, path: Path, display: str, io_pairs: list[dict[str, str]]) -> list[Problem]:
        from oig.data.evals import EVALS_DIR

        evals_dir = Path(path).parent.parent / EVALS_DIR
        if evals_dir not in self.indexes:
            self.indexes[evals_dir] = Index(eval_references(evals_dir))
        index = self.indexes[evals_dir]
        if not index or not io_pairs:
            return []
        # The file is read again only when an input overlaps: its lines are wanted only then.
        return pair_warnings(lambda: yamlsafe.decode(Path(path).read_bytes()), display, io_pairs, index,
                             eval_message)
