"""Reading the history: every commit that changed training_log or model.yaml on a branch, as runs.

A run is a commit whose training_log differs from the one before it on that branch. Its training_log is
read with ``RunLog.from_dict`` (model.yaml with ``model_yaml_problem`` and ``ModelRef.from_dict``); a file
that does not parse or has the wrong shape is a warning naming the commit, and that commit is skipped.
Values inside a good file are still untrusted: numbers that are not numbers and lists that are not lists
read as missing, never as a crash. The slices a run mixed are read at the commit it trained from (its
``git_commit``, else the results commit), for their licence, source, description and ``fixes:`` claims.

All blobs come through one ``git cat-file --batch`` per pass, so 100 runs cost a handful of processes.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from oig import runlog, yamlsafe
from oig.bugs.render import summarize
from oig.errors import OigError
from oig.publish import gitops

LOG_PATHS = (runlog.TRAINING_LOG, runlog.MODEL_YAML)
GITHUB = re.compile(r"https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/([A-Za-z0-9._-]{1,100}?)(?:\.git)?/?")
_SSH_GITHUB = re.compile(r"git@github\.com:([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/([A-Za-z0-9._-]{1,100}?)(?:\.git)?")
_RESULTS_RUN = re.compile(r"^Training results of run ([0-9]{1,20})\b")  # oig commit-results' message in train.yml
_PR_SUBJECT = re.compile(r"\(#([0-9]{1,9})\)\s*$|^Merge pull request #([0-9]{1,9})\b")
_SHA = re.compile(r"[0-9a-f]{40}")
_SLICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MAX_POINTS = 400  # points of one loss curve; longer runs are sampled evenly


class HistoryError(OigError):
    """The history cannot be read: not a git repository, no such branch."""


@dataclass
class SliceInfo:
    name: str
    weight: float | None = None
    share: float | None = None
    count: int | None = None
    pins: list[str] = field(default_factory=list)
    license: str | None = None
    source: str | None = None
    description: str | None = None
    fixes: list[int] = field(default_factory=list)


@dataclass
class Run:
    commit: str  # the commit that changed training_log
    date: str  # its committer date, ISO 8601 in UTC
    subject: str
    branch: str
    run_id: str
    base_model: str
    trained_from: str | None
    finished_at: str | None
    train_loss: float | None
    eval_loss: float | None
    steps: int | None
    total: int | None  # the mixture's size
    slices: list[SliceInfo]
    hyperparameters: dict[str, object]
    curve: list[tuple[float, float | None, float | None]]  # (step, loss, eval_loss)
    suites: dict[str, dict]  # name -> score, cases, passed, failed, ci95
    lm_eval: dict[tuple[str, str], float]  # (task, metric) -> value, from lm-evaluation-harness
    bugs: list[dict]
    bug_counts: dict[str, int]
    gate: str | None  # passed, failed, overridden
    gate_reasons: list[str]
    model: runlog.ModelRef | None
    workflow_run: str | None  # the Actions run id, from the results commit's message
    previous: Run | None = None

    @property
    def page(self) -> str:
        return f"runs/{self.commit[:12]}.html"


@dataclass
class Branch:
    name: str
    runs: list[Run]
    live: runlog.ModelRef | None  # model.yaml at the branch's tip


@dataclass
class History:
    branches: list[Branch]
    runs: list[Run]  # every run once, oldest first
    repo_url: str | None
    warnings: list[str] = field(default_factory=list)
    pulls: dict[str, int] = field(default_factory=dict)  # slice name -> the pull request that added it


# --- plain values from untrusted documents ------------------------------------------------------------


def number(value: object) -> float | None:
    """A plain number; NaN, infinities and absurd sizes (they would break a chart's scale) read as missing."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e12  # False for NaN
    return float(value) if ok else None


def whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**15 else None


def text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def rows(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# --- git -------------------------------------------------------------------------------------------------


def github_url(url: str | None) -> str | None:
    """``https://github.com/OWNER/NAME`` for a GitHub remote URL (https or git@), else None."""
    if not url:
        return None
    m = GITHUB.fullmatch(url.strip()) or _SSH_GITHUB.fullmatch(url.strip())
    return f"https://github.com/{m.group(1)}/{m.group(2)}" if m else None


def _blobs(git: gitops._Git, specs: list[str]) -> list[tuple[str, bytes] | None]:
    """(blob sha, content) of each ``COMMIT:PATH``, or None where there is none, in one process."""
    if not specs:
        return []
    try:
        proc = subprocess.run(["git", "cat-file", "--batch"], cwd=git.root, env=git.env, capture_output=True,
                              input="".join(s + "\n" for s in specs).encode(), timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HistoryError(f"`git cat-file --batch` failed: {exc}") from None
    if proc.returncode != 0:
        raise HistoryError(f"`git cat-file --batch` failed: {git.clean(proc.stderr.decode(errors='replace'))}")
    out, pos, found = proc.stdout, 0, []
    for _ in specs:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3 or header[1] != b"blob":
            found.append(None)  # missing, or a tree where a file was expected
            if len(header) == 3:
                pos += int(header[2]) + 1
            continue
        size = int(header[2])
        found.append((header[0].decode(), out[pos:pos + size]))
        pos += size + 1
    return found


def _commits(git: gitops._Git, ref: str) -> list[tuple[str, str, str]]:
    """(sha, date, subject) of every commit on ``ref`` that changed training_log or model.yaml, oldest first."""
    found = []
    for line in git.out("log", "--reverse", "--format=%H%x1f%ct%x1f%s", ref, "--", *LOG_PATHS).splitlines():
        sha, stamp, subject = (line.split("\x1f", 2) + ["", ""])[:3]
        when = datetime.fromtimestamp(int(stamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if stamp.isdigit() else ""
        found.append((sha, when, subject))
    return found


def _document(where: str, blob: tuple[str, bytes]) -> object:
    try:
        return yamlsafe.load(blob[1])
    except yamlsafe.YamlError as exc:
        raise runlog.RunLogError(f"{where}:{exc.line}:{exc.col}: {exc.message}") from None


def _model_yaml(where: str, blob: tuple[str, bytes] | None) -> runlog.ModelRef | None:
    if blob is None:
        return None
    doc = _document(where, blob)
    problem = runlog.model_yaml_problem(doc)
    if problem:
        raise runlog.RunLogError(f"{where} is not a valid model.yaml: {problem}")
    return runlog.ModelRef.from_dict(doc, where)


# --- one run ---------------------------------------------------------------------------------------------


def _curve(metrics: object) -> list[tuple[float, float | None, float | None]]:
    points = []
    for m in rows(metrics):
        step, loss, eval_loss = number(m.get("step")), number(m.get("loss")), number(m.get("eval_loss"))
        if step is not None and (loss is not None or eval_loss is not None):
            points.append((step, loss, eval_loss))
    if len(points) > MAX_POINTS:
        keep = {round(i * (len(points) - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)}
        keep |= {i for i, p in enumerate(points) if p[2] is not None}  # every evaluation stays
        points = [p for i, p in enumerate(points) if i in keep]
    return points


def _suites(evals: object) -> dict[str, dict]:
    suites = {}
    for name, s in mapping(mapping(evals).get("suites")).items():
        s = mapping(s)
        ci = s.get("ci95")
        suites[str(name)] = {"score": number(s.get("score")), "cases": whole(s.get("cases")),
                             "passed": whole(s.get("passed")), "failed": whole(s.get("failed")),
                             "ci95": [number(c) for c in ci] if isinstance(ci, list) and len(ci) == 2 else None}
    return suites


def _lm_eval(evals: object) -> dict[tuple[str, str], float]:
    tasks = mapping(mapping(mapping(evals).get("lm_eval")).get("tasks"))
    return {(str(task), str(metric)): v for task, metrics in tasks.items()
            for metric, raw in mapping(metrics).items() if (v := number(raw)) is not None}


def _gate(gate: object) -> tuple[str | None, list[str]]:
    gate = mapping(gate)
    if not gate:
        return None, []
    listed = gate.get("reasons")
    reasons = [str(r) for r in listed if isinstance(r, str | int | float)] if isinstance(listed, list) else []
    if gate.get("overridden") is True:
        return "overridden", reasons
    return ("passed" if gate.get("passed") is True else "failed"), reasons


def _pin(pin: dict) -> str:
    """``link @ revision`` (or the file's sha256) of one pinned source."""
    at = text(pin.get("revision")) or (text(pin.get("sha256")) or "")[:12]
    return f"{text(pin.get('link')) or '?'} @ {at or 'unpinned'}"


def _slices(manifest: dict) -> list[SliceInfo]:
    out = []
    for s in rows(manifest.get("slices")):
        name = text(s.get("name"))
        if name is None:
            continue
        pins = [_pin(p) for p in s.get("pins") if isinstance(p, dict)] if isinstance(s.get("pins"), list) else []
        out.append(SliceInfo(name, number(s.get("weight")), number(s.get("share")), whole(s.get("count")), pins))
    return out


def make_run(log: runlog.RunLog, commit: tuple[str, str, str], branch: str) -> Run:
    sha, date, subject = commit
    manifest = mapping(log.extra.get("mixture"))
    bugs = []
    for b in rows(log.bugs):
        bugs.append({k: b.get(k) if isinstance(b.get(k), str) else None
                     for k in ("title", "input", "expected", "reported", "before", "before_source", "after",
                               "verdict", "error")} | {"number": whole(b.get("number")), "score": number(b.get("score"))})
    gate, reasons = _gate(log.extra.get("gate"))
    hyper = {str(k): v for k, v in mapping(log.extra.get("hyperparameters")).items()
             if v is None or isinstance(v, str | int | float | bool)}
    workflow = _RESULTS_RUN.match(subject)
    return Run(commit=sha, date=date, subject=subject, branch=branch, run_id=str(log.run_id),
               base_model=str(log.base_model), trained_from=text(log.git_commit), finished_at=text(log.finished_at),
               train_loss=number(log.train_loss), eval_loss=number(log.eval_loss), steps=whole(log.steps),
               total=whole(manifest.get("total")), slices=_slices(manifest), hyperparameters=hyper,
               curve=_curve(log.metrics), suites=_suites(log.extra.get("evals")),
               lm_eval=_lm_eval(log.extra.get("evals")), bugs=bugs,
               bug_counts=summarize(bugs), gate=gate, gate_reasons=reasons, model=log.model,
               workflow_run=workflow.group(1) if workflow else None)


# --- the whole history -----------------------------------------------------------------------------------


def _branch_runs(git: gitops._Git, name: str, ref: str, seen: dict[str, Run], warnings: list[str]) -> Branch:
    commits = _commits(git, ref)
    blobs = _blobs(git, [f"{c[0]}:{p}" for c in commits for p in LOG_PATHS])
    runs: list[Run] = []
    last_log: str | None = None
    last_model: str | None = None
    live = None
    for i, commit in enumerate(commits):
        short = commit[0][:12]
        log_blob, model_blob = blobs[2 * i], blobs[2 * i + 1]
        if (model_blob and model_blob[0]) != last_model:  # read each version of model.yaml once
            last_model = model_blob and model_blob[0]
            try:
                live = _model_yaml(f"commit {short}: {runlog.MODEL_YAML}", model_blob)
            except runlog.RunLogError as exc:
                warnings.append(f"skipped {exc}")
                live = None
        if log_blob is None or log_blob[0] == last_log:
            continue  # model.yaml alone changed, or training_log was put back as it was
        last_log = log_blob[0]
        if commit[0] in seen:
            runs.append(seen[commit[0]])
            continue
        where = f"commit {short}: {runlog.TRAINING_LOG}"
        try:
            log = runlog.RunLog.from_dict(_document(where, log_blob), where)
        except runlog.RunLogError as exc:
            warnings.append(f"skipped {exc}")
            continue
        run = make_run(log, commit, name)
        run.previous = runs[-1] if runs else None
        seen[commit[0]] = run
        runs.append(run)
    return Branch(name, runs, live)


def _read_slices(git: gitops._Git, runs: list[Run], warnings: list[str]) -> None:
    """Licence, source, description and ``fixes:`` of each run's slices, at the commit it trained from."""
    wanted = [(run, s) for run in runs for s in run.slices if _SLICE_NAME.fullmatch(s.name)]
    at = [run.trained_from if _SHA.fullmatch(run.trained_from or "") else run.commit for run, _ in wanted]
    blobs = _blobs(git, [f"{c}:data/{s.name}.yaml" for c, (_, s) in zip(at, wanted, strict=True)])
    # A commit trained from that this clone lacks (a shallow clone): the results commit's slices instead.
    again = [i for i, b in enumerate(blobs) if b is None and at[i] != wanted[i][0].commit]
    for i, blob in zip(again, _blobs(git, [f"{wanted[i][0].commit}:data/{wanted[i][1].name}.yaml" for i in again]),
                       strict=True):
        blobs[i] = blob
    parsed: dict[str, dict] = {}
    for (run, s), blob in zip(wanted, blobs, strict=True):
        if blob is None:
            continue
        if blob[0] not in parsed:
            try:
                parsed[blob[0]] = mapping(yamlsafe.load(blob[1]))
            except yamlsafe.YamlError as exc:
                warnings.append(f"commit {run.commit[:12]}: data/{s.name}.yaml:{exc.line}:{exc.col}: {exc.message}")
                parsed[blob[0]] = {}
        doc = parsed[blob[0]]
        s.license, s.source, s.description = text(doc.get("license")), text(doc.get("source")), text(doc.get("description"))
        fixes = doc.get("fixes")
        s.fixes = sorted({n for n in fixes if whole(n) is not None and n > 0}) if isinstance(fixes, list) else []


def _pulls(git: gitops._Git, refs: list[str], names: set[str]) -> dict[str, int]:
    """The pull request that added each slice that claims fixes, from the subject of the commit that added it."""
    found = {}
    for name in sorted(names):
        log = git.out("log", "--diff-filter=A", "--format=%s", *refs, "--", f"data/{name}.yaml").splitlines()
        m = _PR_SUBJECT.search(log[-1]) if log else None
        if m:
            found[name] = int(m.group(1) or m.group(2))
    return found


def read_history(root: Path, *, branches: list[str] = (), repo_url: str | None = None) -> History:
    """The runs of the current branch and of ``branches``: each run once, oldest first, with warnings."""
    try:
        git = gitops._open(Path(root))
    except gitops.GitError as exc:
        raise HistoryError(str(exc)) from None
    if repo_url is not None and github_url(repo_url) is None:
        raise HistoryError(f"--repo-url {repo_url!r} is not a GitHub repository URL (https://github.com/OWNER/NAME)")
    if repo_url is None:
        repo_url = github_url(git.out("remote", "get-url", "origin", check=False))
    else:
        repo_url = github_url(repo_url)
    current = git.out("symbolic-ref", "--short", "-q", "HEAD", check=False) or "HEAD"
    if not git.ok("rev-parse", "--verify", "--quiet", "HEAD"):
        raise HistoryError(f"{git.root} has no commits yet")
    names = [current] + [b for b in dict.fromkeys(branches) if b != current]
    refs = []
    for name in names:
        if name != "HEAD" and (name.startswith("-") or not git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{name}")):
            raise HistoryError(f"--branches: there is no local branch {name!r} (see `git branch`)")
        refs.append((name, "HEAD" if name == "HEAD" else f"refs/heads/{name}"))
    warnings: list[str] = []
    seen: dict[str, Run] = {}
    result = [_branch_runs(git, name, ref, seen, warnings) for name, ref in refs]
    runs = sorted(seen.values(), key=lambda r: r.date)  # stable: a branch's order where dates tie
    _read_slices(git, runs, warnings)
    claimed = {s.name for r in runs for s in r.slices if s.fixes}
    # A commit on several branches is read once per branch: its warning is said once.
    return History(result, runs, repo_url, list(dict.fromkeys(warnings)), _pulls(git, [r for _, r in refs], claimed))
