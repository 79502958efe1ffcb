"""What is safe to post, and how the suite's results look: a table for the terminal, one for Markdown.

Issue text is hostile. Everything posted from it neutralises @mentions (a zero-width space after each
``@``) and is fenced with more backticks than the text contains, so it cannot close the fence and turn
into live Markdown (images, links, HTML); table cells lose backticks, pipes and ``<``. Texts are cut
to ``SHOWN_LIMIT`` characters, saying how many more there were.
"""

from __future__ import annotations

import re

SHOWN_LIMIT = 4000  # characters of one text in a comment or training_log (comments max 65,536)
ERROR_LIMIT = 500  # characters of a model's error text kept in a record or a comment

VERDICTS = ("fixed", "still broken", "regressed", "passing", "unknown")  # in the order summaries count them

_MENTION = re.compile(r"@(?=[A-Za-z0-9_-])")


def short(text: str | None, limit: int = SHOWN_LIMIT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit:,} more characters)"


def neutralize(text: str) -> str:
    """No @mentions: a zero-width space after each @ keeps the text and pings nobody."""
    return _MENTION.sub("@\u200b", text)


def fenced(text: str | None, info: str = "text") -> str:
    """Text in a code block whose fence is longer than any backtick run in it, so it cannot break out."""
    if text is None:
        return "_(none)_"
    text = neutralize(short(text) or "")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def inline(text: str | None) -> str:
    """A short value (revision, model name) as inline code, or a placeholder when it is odd."""
    if not text:
        return "_unknown_"
    if re.fullmatch(r"[\w.:/@+-]{1,120}", text):
        return f"`{neutralize(text)}`"
    return "_(not shown)_"


def plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("`", "'")


def cell(text: str | None, width: int) -> str:
    if text is None:
        return "-"
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def md_cell(text: str | None, width: int = 80) -> str:
    return neutralize(cell(text, width)).replace("|", "\\|").replace("`", "'").replace("<", "&lt;")


# --- the suite's results ----------------------------------------------------------------------------------


def summarize(records: list[dict]) -> dict:
    """How many records have each verdict (an unknown verdict counts as unknown), and the total."""
    counts = {v: 0 for v in VERDICTS}
    for r in records:
        counts[r.get("verdict", "unknown") if r.get("verdict") in counts else "unknown"] += 1
    return {"total": len(records), **counts}


def _summary_line(records: list[dict]) -> str:
    s = summarize(records)
    return f"{s['total']} bug(s): " + ", ".join(f"{s[v]} {v}" for v in VERDICTS)


def render_text(records: list[dict]) -> str:
    rows = [("bug", "verdict", "score", "input", "before", "after")]
    for r in records:
        score = "-" if r.get("score") is None else f"{r['score']:.2f}"
        rows.append((f"#{r['number']}" if r.get("number") else "-", r["verdict"], score,
                     cell(r.get("input"), 30), cell(r.get("before"), 30), cell(r.get("after"), 30)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(_summary_line(records))
    return "\n".join(lines) + "\n"


def render_markdown(records: list[dict], title: str = "Bug regression suite") -> str:
    out = [f"### {title}\n", _summary_line(records) + "\n"]
    if records:
        out += ["| bug | verdict | score | input | before | after |", "|---|---|---|---|---|---|"]
        for r in records:
            score = "" if r.get("score") is None else f"{r['score']:.2f}"
            number = f"#{r['number']}" if r.get("number") else ""
            out.append(f"| {number} | {r['verdict']} | {score} | {md_cell(r.get('input'))} | "
                       f"{md_cell(r.get('before'))} | {md_cell(r.get('after'))} |")
    return "\n".join(out) + "\n"
