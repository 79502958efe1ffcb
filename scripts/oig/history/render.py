"""The page frame (Content-Security-Policy, the one style sheet, navigation), small HTML helpers that
escape everything they are given, and the links out of the site (GitHub, the Hub), built only from
values that match a plain form."""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape

from oig.history.site import History, Run

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0 auto;max-width:1200px;padding:0 20px 40px}
nav{border-bottom:1px solid #ddd;padding:10px 0;margin-bottom:8px}nav a{margin-right:16px}
a{color:#0b5cad;text-decoration:none}a:hover{text-decoration:underline}table a{white-space:nowrap}
h1{font-size:22px;margin:14px 0 6px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #eee;padding-bottom:3px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.text{white-space:pre-wrap;word-break:break-word;max-width:320px}
.wide{overflow-x:auto}.chart{width:100%;max-width:760px;height:auto;display:block;margin:4px 0 14px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:8px 24px}
.passed,.fixed{color:#137333}.failed,.regressed{color:#b3261e;font-weight:600}.overridden{color:#b06000}
.muted{color:#666}code{font-size:12px;background:#f4f4f4;padding:0 3px;border-radius:3px}
figure{margin:0}figcaption{font-weight:600;font-size:13px;margin:6px 0 0}
.v{display:inline-block;width:15px;height:17px;margin:1px;text-align:center;font-size:11px;line-height:17px;color:#fff;border-radius:2px}
.v.fixed{background:#2ca02c}.v.regressed{background:#d62728;font-weight:400}.v.still{background:#ff7f0e}
.v.passing{background:#9a9a9a}.v.unknown{background:#c8c8c8;color:#333}
dl{display:grid;grid-template-columns:max-content auto;gap:3px 14px;margin:6px 0}dt{color:#555}dd{margin:0}
"""
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# No script at all; the one inline style sheet is allowed by its hash; images only from the site itself.
CSP = (f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'self' data:; base-uri 'none'; "
       "form-action 'none'")
_HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_HUB_REV = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_ENDPOINT = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?")


# --- HTML helpers: each escapes what it is given -----------------------------------------------------------


def esc(value: object, missing: str = "–") -> str:
    return missing if value is None or value == "" else escape(str(value))


def num(value: float | int | None, fmt: str = "{:.4g}") -> str:
    return "–" if value is None else escape(fmt.format(value))


def a(href: str | None, label: str) -> str:
    """A link (``label`` is HTML already); plain text when there is no address."""
    return f'<a href="{escape(href)}">{label}</a>' if href else label


def table(headers: list[str], body: list[list[str]], *, numeric: set[int] = frozenset(), text: set[int] = frozenset(),
          empty: str = "Nothing recorded.") -> str:
    """A table of cells that are HTML already; columns in ``numeric`` align right, ``text`` wrap."""
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    cls = {i: ' class="num"' for i in numeric} | {i: ' class="text"' for i in text}
    lines = ["".join(f"<td{cls.get(i, '')}>{c}</td>" for i, c in enumerate(row)) for row in body]
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody><tr>' + "</tr><tr>".join(lines) + \
        "</tr></tbody></table></div>"


def page(title: str, body: str, *, depth: int = 0) -> str:
    up = "../" * depth
    nav = (f'<nav><a href="{up}index.html">Runs</a><a href="{up}bugs.html">Bugs</a>'
           f'<a href="{up}slices.html">Slices</a></nav>')
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>{nav}\n{body}\n</body></html>\n")


# --- links out ---------------------------------------------------------------------------------------------


def commit_url(history: History, sha: str | None) -> str | None:
    return f"{history.repo_url}/commit/{sha}" if history.repo_url and sha and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def workflow_url(history: History, run: Run) -> str | None:
    return f"{history.repo_url}/actions/runs/{run.workflow_run}" if history.repo_url and run.workflow_run else None


def issue_url(history: History, number: int | None) -> str | None:
    return f"{history.repo_url}/issues/{number}" if history.repo_url and number else None


def pull_url(history: History, number: int | None) -> str | None:
    return f"{history.repo_url}/pull/{number}" if history.repo_url and number else None


def commit_link(history: History, sha: str | None) -> str:
    return a(commit_url(history, sha), f"<code>{esc(sha[:12])}</code>") if sha else "–"


def hub_url(model, path: str = "") -> str | None:
    """The model's Hub page at its revision (``path``: a file in it), when every part is a plain name."""
    if model is None or not isinstance(model.hub_repo, str) or not _HUB_REPO.fullmatch(model.hub_repo):
        return None
    rev, endpoint = model.hub_revision, model.endpoint or "https://huggingface.co"
    if not isinstance(endpoint, str) or not _ENDPOINT.fullmatch(endpoint.rstrip("/")) or (
            rev is not None and not (isinstance(rev, str) and _HUB_REV.fullmatch(rev))):
        return None
    endpoint = endpoint.rstrip("/")
    if path:
        return f"{endpoint}/{model.hub_repo}/blob/{rev or 'main'}/{path}"
    return f"{endpoint}/{model.hub_repo}" + (f"/tree/{rev}" if rev else "")


def model_html(model) -> str:
    """Where a model is: Hub repo@revision (linked), a local folder, and the Together model or endpoint."""
    if model is None:
        return '<span class="muted">not recorded</span>'
    parts = []
    if model.hub_repo:
        where = f"<code>{esc(model.hub_repo)}</code>" + (f"@<code>{esc(model.hub_revision)}</code>" if model.hub_revision else "")
        parts.append("Hub " + a(hub_url(model), where))
    if model.local_path:
        parts.append(f"local folder <code>{esc(model.local_path)}</code>")
    if model.together:
        t = model.together
        parts.append(f"Together <code>{esc(t.model)}</code>" + (f", endpoint <code>{esc(t.endpoint)}</code>" if t.endpoint else ""))
    return "; ".join(parts) or '<span class="muted">not recorded</span>'


def gate_html(run: Run) -> str:
    return f'<span class="{run.gate}">{run.gate}</span>' if run.gate else "–"


def run_label(run: Run, depth: int = 0) -> str:
    return a("../" * depth + run.page, esc(run.run_id))
