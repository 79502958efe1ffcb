"""Judges: their prompts, reading their verdicts, a local reward model, and scores from 0 to 1.

LLM judges answer in JSON (structured output where the server has it). Their raw output is always
kept; output that is not the JSON asked for is recorded with ``parse_ok: false`` and the reason, and
never becomes a score. Pairwise judges see each pair in both orders (position bias is real); the two
verdicts must agree, or the pair is a tie.

An answer's score (0 to 1) is the weighted mean of each judge's score:

- score and reference judges: ``(score - 1) / (scale - 1)``, averaged over aspects;
- pairwise judges: the share of its pairs it won, a tie as half;
- reward models: scaled among the instruction's answers, the lowest 0 and the highest 1 (0.5 when
  all are equal), since their raw scores have no fixed range.

Missing verdicts (an unreadable verdict, a failed judge call, an undecided pair) must not make scores
incomparable: averaging each answer over only the judges that read it would let a lenient judge's
missing verdict on one answer flip the best answer. So for each instruction only the judges that
read *all* of its answers count, with the same weights for every answer (``counted_judges``); a
judge missing even one verdict counts for none of that instruction's answers. When no judge read
every answer, the instruction has no scores, so no best answer, no SFT row and no pairs. Every
missing (judge, answer) verdict is listed (``missing_verdicts``) on the record and on every row
exported from it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from oig.generate.config import JudgeSpec

# Bump when a judge prompt changes: judge calls are stored under it, so a new prompt asks again.
JUDGE_PROMPT_VERSION = 1
# Bump when the reward model's input changes (2: no second BOS token after the chat template's).
REWARD_ENCODING_VERSION = 2

SYSTEM = ("You are an impartial expert judge of answers written by AI assistants. Judge only the answer's "
          "quality for the user's request; ignore its length and style unless they hurt it. Reply with a JSON "
          "object only, no other text.")


def render_conversation(messages: list[dict]) -> str:
    return "\n\n".join(f"[{m['role'].upper()}]\n{m['content']}" for m in messages)


# --- prompts ----------------------------------------------------------------------------------------


def score_messages(judge: JudgeSpec, prompt: list[dict], answer: str) -> list[dict]:
    aspects = ", ".join(judge.aspects)
    example = ", ".join(f'"{a}": <1-{judge.scale}>' for a in judge.aspects)
    user = (f"Rate the assistant's answer to the conversation below on each aspect ({aspects}), from 1 (worst) "
            f"to {judge.scale} (best).\n\n<conversation>\n{render_conversation(prompt)}\n</conversation>\n\n"
            f"<answer>\n{answer}\n</answer>\n\n"
            f'Reply with JSON only: {{"scores": {{{example}}}, "rationale": "<one or two sentences>"}}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(prompt: list[dict], first: str, second: str) -> list[dict]:
    user = (f"Which answer to the conversation below is better, A or B? Answer tie only when neither is "
            f"better.\n\n<conversation>\n{render_conversation(prompt)}\n</conversation>\n\n"
            f"<answer_A>\n{first}\n</answer_A>\n\n<answer_B>\n{second}\n</answer_B>\n\n"
            'Reply with JSON only: {"winner": "A" | "B" | "tie", "rationale": "<one or two sentences>"}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def reference_messages(judge: JudgeSpec, prompt: list[dict], answer: str, reference: str) -> list[dict]:
    user = (f"Compare the assistant's answer with the reference answer to the conversation below. Rate how "
            f"correct and complete the answer is, taking the reference as right, from 1 (wrong) to {judge.scale} "
            f"(as good as the reference or better).\n\n<conversation>\n{render_conversation(prompt)}\n"
            f"</conversation>\n\n<reference>\n{reference}\n</reference>\n\n<answer>\n{answer}\n</answer>\n\n"
            f'Reply with JSON only: {{"score": <1-{judge.scale}>, "rationale": "<one or two sentences>"}}')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def output_schema(judge: JudgeSpec) -> dict:
    """The JSON Schema of the judge's verdict, for structured output."""
    rationale = {"type": "string"}
    if judge.kind == "score":
        scores = {"type": "object", "additionalProperties": False, "required": list(judge.aspects),
                  "properties": {a: {"type": "integer", "minimum": 1, "maximum": judge.scale} for a in judge.aspects}}
        props = {"scores": scores, "rationale": rationale}
    elif judge.kind == "pairwise":
        props = {"winner": {"type": "string", "enum": ["A", "B", "tie"]}, "rationale": rationale}
    else:
        props = {"score": {"type": "integer", "minimum": 1, "maximum": judge.scale}, "rationale": rationale}
    return {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}


def response_format(judge: JudgeSpec) -> dict | None:
    if judge.json_mode == "off":
        return None
    if judge.json_mode == "object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": output_schema(judge), "strict": True}}


# --- reading verdicts -------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_json(raw: str) -> dict:
    """The JSON object in a judge's output: the whole text, a ```json fence, or the outermost {...}."""
    candidates = [raw.strip()]
    candidates += [m.strip() for m in _FENCE.findall(raw)]
    start, end = raw.find("{"), raw.rfind("}")
    if 0 <= start < end:
        candidates.append(raw[start:end + 1])
    for text in candidates:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in the output")


def _number(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{what} is {value!r}, not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{what} is {json.dumps(value)}, not a number")
    if not low <= value <= high:
        raise ValueError(f"{what} is {value:g}, outside {low:g} to {high:g}")
    return float(value)


def _rationale(data: dict) -> str | None:
    r = data.get("rationale")
    return r if isinstance(r, str) else None


def parse_score(raw: str, aspects: tuple[str, ...], scale: int) -> tuple[dict[str, float], str | None]:
    """aspect -> score and the rationale. Raises ValueError saying what is wrong."""
    data = extract_json(raw)
    scores = data.get("scores")
    if not isinstance(scores, dict):
        raise ValueError('no "scores" object')
    lowered = {str(k).lower(): v for k, v in scores.items()}
    out = {}
    for aspect in aspects:
        if aspect.lower() not in lowered:
            raise ValueError(f'no score for "{aspect}"')
        out[aspect] = _number(lowered[aspect.lower()], f'the score for "{aspect}"', 1, scale)
    return out, _rationale(data)


def parse_pairwise(raw: str) -> tuple[str, str | None]:
    """"A", "B" or "tie", and the rationale. Raises ValueError."""
    data = extract_json(raw)
    winner = data.get("winner")
    if not isinstance(winner, str) or winner.strip().lower() not in ("a", "b", "tie"):
        raise ValueError(f'"winner" is {json.dumps(winner)}, not "A", "B" or "tie"')
    w = winner.strip().lower()
    return ("tie" if w == "tie" else w.upper()), _rationale(data)


def parse_reference(raw: str, scale: int) -> tuple[float, str | None]:
    data = extract_json(raw)
    if "score" not in data:
        raise ValueError('no "score"')
    return _number(data["score"], "the score", 1, scale), _rationale(data)


# --- scores ----------------------------------------------------------------------------------------


def battle(first_verdict: float | None, second_verdict: float | None) -> tuple[str | None, bool | None]:
    """The pair's result from both orders, each as a score for answer ``a`` (1 won, 0.5 tie, 0 lost).

    Returns (winner: "a" | "b" | "tie", consistent), or (None, None) when a verdict is missing."""
    if first_verdict is None or second_verdict is None:
        return None, None
    if first_verdict != second_verdict:
        return "tie", False
    return {1.0: "a", 0.0: "b"}.get(first_verdict, "tie"), True


def judge_scores(judge: JudgeSpec, evaluations: list[dict], battles: list[dict],
                 response_ids: list[str]) -> dict[str, float]:
    """response id -> this judge's score from 0 to 1, for the answers it scored."""
    out: dict[str, float] = {}
    if judge.kind in ("score", "reference"):
        by_response: dict[str, list[float]] = {}
        for e in evaluations:
            if e["judge"] == judge.name and e["parse_ok"] and e["score"] is not None:
                low, high = e["scale"]
                by_response.setdefault(e["response_id"], []).append((e["score"] - low) / (high - low))
        out = {rid: sum(v) / len(v) for rid, v in by_response.items()}
    elif judge.kind == "pairwise":
        games: dict[str, list[float]] = {}
        for b in battles:
            if b["judge"] != judge.name or b["winner"] is None:
                continue
            a_score = {"a": 1.0, "b": 0.0, "tie": 0.5}[b["winner"]]
            games.setdefault(b["a"], []).append(a_score)
            games.setdefault(b["b"], []).append(1.0 - a_score)
        out = {rid: sum(v) / len(v) for rid, v in games.items()}
    else:
        raw = {e["response_id"]: e["score"] for e in evaluations
               if e["judge"] == judge.name and e["parse_ok"] and e["score"] is not None}
        if raw:
            low, high = min(raw.values()), max(raw.values())
            out = {rid: 0.5 if high == low else (s - low) / (high - low) for rid, s in raw.items()}
    return {rid: out[rid] for rid in response_ids if rid in out}


def missing_verdicts(evaluations: list[dict], battles: list[dict]) -> list[tuple[str, str]]:
    """(judge, response id) for every verdict a judge was asked for and did not give, in first-seen order.

    Unreadable or failed evaluations count; a pairwise battle without a winner (either order missing)
    counts for both of its answers."""
    seen: dict[tuple[str, str], None] = {}
    for e in evaluations:
        if e["kind"] != "pairwise" and (not e["parse_ok"] or e["score"] is None):
            seen[(e["judge"], e["response_id"])] = None
    for b in battles:
        if b["winner"] is None:
            seen[(b["judge"], b["a"])] = None
            seen[(b["judge"], b["b"])] = None
    return list(seen)


def counted_judges(judges: list[JudgeSpec], per_judge: dict[str, dict[str, float]], response_ids: list[str],
                   missing: list[tuple[str, str]]) -> list[JudgeSpec]:
    """The judges whose scores count for this instruction: a weight above 0, a score for every answer
    and no missing verdict. The same judges count for every answer, so scores compare."""
    incomplete = {judge for judge, _ in missing}
    return [j for j in judges if j.weight > 0 and j.name not in incomplete
            and all(rid in per_judge.get(j.name, {}) for rid in response_ids)]


def combine(judges: list[JudgeSpec], per_judge: dict[str, dict[str, float]], response_ids: list[str]) -> dict[str, float]:
    """response id -> weighted mean of ``judges``' scores; pass ``counted_judges`` so that every answer
    is scored by the same judges (answers a judge did not score are left out)."""
    out = {}
    for rid in response_ids:
        pairs = [(j.weight, per_judge[j.name][rid]) for j in judges if j.weight > 0 and rid in per_judge.get(j.name, {})]
        total = sum(w for w, _ in pairs)
        if total > 0:
            out[rid] = round(sum(w * s for w, s in pairs) / total, 6)
    return out


# --- a local reward model ---------------------------------------------------------------------------


@dataclass
class RewardModel:
    """A sequence classification model giving one number per (conversation, answer). Loaded on first use."""

    ref: str  # a local folder or a Hub model id
    revision: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = None
        self._identity: str | None = None

    def identity(self) -> str:
        """What the model is, for store keys: a folder's content hash, or the Hub id at its revision."""
        if self._identity is None:
            folder = Path(self.ref)
            if folder.is_dir():
                digest = hashlib.sha256()
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            digest.update(chunk)
                self._identity = f"folder:{digest.hexdigest()}"
            else:
                self._identity = f"hub:{self.ref}@{self.revision or 'main'}"
        return self._identity

    def score(self, messages: list[dict]) -> float:
        """The reward of a conversation that ends with the answer. Thread-safe; one at a time."""
        with self._lock:
            model, tokenizer = self._load()
            import torch

            # A chat template writes its own special tokens (Llama's starts with <s> or
            # <|begin_of_text|>): letting the tokenizer add them again would give two BOS tokens,
            # an input the model never saw in training, and a different score.
            if tokenizer.chat_template:
                text = tokenizer.apply_chat_template(messages, tokenize=False)
                special = False
            else:
                text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
                special = True
            limit = min(int(getattr(tokenizer, "model_max_length", 4096) or 4096), 8192)
            batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=limit,
                              add_special_tokens=special)
            with torch.no_grad():
                logits = model(**batch).logits
            return float(logits[0, 0])

    def _load(self):
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.ref, revision=self.revision, trust_remote_code=False)
                model = AutoModelForSequenceClassification.from_pretrained(
                    self.ref, revision=self.revision, trust_remote_code=False)
            except (OSError, ValueError) as exc:
                from oig.errors import OigError

                raise OigError(f"cannot load the reward model {self.ref}: {exc}") from None
            model.eval()
            if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
                model.config.pad_token_id = tokenizer.pad_token_id
            self._loaded = (model, tokenizer)
        return self._loaded
