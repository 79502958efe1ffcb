"""Validation of slice files and training.yaml: every problem at once, each with a line and a fix.

The fast path for a valid file is: libyaml events -> plain data (``yamlsafe``) -> one jsonschema-rs
check -> a few checks no schema can express. Line numbers are looked up only for files that have a
problem, by walking the YAML events again (``yamlsafe.locate``). One cohesive module: every check of a
slice file, from bytes to the remote links, with its messages.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from oig import yamlsafe
from oig.data import evals, messages, overlap
from oig.data.config import parse_training_config
from oig.data.schemas import SLICE_SCHEMA
from oig.data.slices import SECTIONS, Slice, slice_from_document
from oig.errors import InvalidInput, Problem
from oig.records import CONTROL_TOKEN

SLICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SHA40 = re.compile(r"[0-9a-f]{40}")
HF_HOST = "huggingface.co"
HF_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
TRAINING_FILE = "training.yaml"
IGNORED_IN_DATA = {"README.md", "LICENSE"}


# Without --remote, what an unpinned link should add; --remote replaces these with the exact line.
PIN_HINTS = ("dataset is not pinned: add `revision: <40-character commit sha>` so the data cannot change under "
             "the model (`oig validate --remote` prints the exact line)",
             "file is not pinned: add `sha256: <hex>` so the data cannot change under the model "
             "(`oig validate --remote` prints the exact line)")


@dataclass(frozen=True)
class ValidateOptions:
    remote: bool = False  # also resolve links: existence, pins, every row converted (within the limits)
    allow_local: bool = False  # accept local paths and loopback http in links (tests, private mirrors)
    base_dir: Path = Path(".")
    remote_max_bytes: int = 256 * 1024**2  # 256 MiB read per link at most; larger is "not fully checked"
    remote_timeout_s: float = 300.0  # seconds per link at most, download and conversion together
    remote_only: frozenset[Path] | None = None  # with remote: only these slice files (None: all)


@cache
def _slice_validator():
    import jsonschema_rs

    return jsonschema_rs.validator_for(SLICE_SCHEMA)


def _display(path: Path) -> str:
    """The path as GitHub annotations want it: relative to the current directory when possible."""
    try:
        return os.path.relpath(path) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def _read_regular_file(path: Path, display: str) -> tuple[bytes | None, list[Problem]]:
    """Read a file from a stranger's PR: refuse symlinks, devices and oversize files before reading."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return None, [Problem(display, 0, 0, "error", f"cannot read file: {exc.strerror}")]
    if stat.S_ISLNK(st.st_mode):
        return None, [Problem(display, 0, 0, "error", "symbolic links are not allowed here; commit the file itself")]
    if not stat.S_ISREG(st.st_mode):
        return None, [Problem(display, 0, 0, "error", "not a regular file")]
    if st.st_size > yamlsafe.MAX_BYTES:
        return None, [Problem(display, 0, 0, "error", f"file is {st.st_size:,} bytes; the limit is "
                              f"{yamlsafe.MAX_BYTES:,}: split it into several slices or link the data")]
    with open(path, "rb") as f:
        return f.read(yamlsafe.MAX_BYTES + 1), []


# --- schema errors as messages a contributor can act on ------------------------------------------


def _schema_problem(err, doc: object) -> tuple[tuple, bool, str]:
    """(yaml path, point at the key?, message) for one jsonschema-rs error."""
    common = messages.schema_problem(err, doc, SLICE_SCHEMA, "the file")
    if common is not None:
        return common
    path = tuple(err.instance_path)
    kind = err.kind
    name = type(kind).__name__
    where = messages.path_text(path)
    if name == "AnyOf" and not path:
        return (), False, f"a slice needs at least one section: {', '.join(SECTIONS)}"
    if name == "Type":
        want = kind.types if hasattr(kind, "types") else None
        value = messages.value_at(doc, path)
        return path, False, messages.must_be(where, messages.type_words(want, none="of another type"), value,
                                             show_value=False, fix=messages.quote_hint(want, value))
    if name == "MinLength":
        return path, False, f"{where} is empty; write the text or remove the entry"
    if name == "MinItems":
        return path, False, f"{where} is an empty list; add entries or remove the section"
    if name == "Pattern":
        field = path[-1] if path else ""
        if field == "sha256":
            return path, False, f"{where} must be 64 lowercase hex digits (the file's sha256)"
        return path, False, f"{where} is not valid: {err.message}"
    if name == "Minimum":
        return path, False, f"{where} must be at least {kind.limit}"
    return path, False, f"{where}: {err.message}"


@dataclass(frozen=True)
class _SubError:
    """A jsonschema-rs error re-rooted at the document, for errors found inside a oneOf branch."""

    instance_path: tuple
    kind: object
    message: str


@dataclass(frozen=True)
class AdditionalProperties:
    """One unknown key of a jsonschema-rs AdditionalProperties error, which lists them all."""

    unexpected: list


def _one_per_unknown_key(errors: list) -> list:
    """An error for every unknown key, not only the first one jsonschema-rs names."""
    out = []
    for err in errors:
        keys = list(err.kind.unexpected) if type(err.kind).__name__ == "AdditionalProperties" else []
        out += [_SubError(tuple(err.instance_path), AdditionalProperties([k]), err.message) for k in keys] or [err]
    return out


def _branch(item: object) -> int:
    """Which oneOf branch of a Preferences item the contributor meant: 1 (a link) or 0 (inline)."""
    return 1 if isinstance(item, dict) and "link" in item else 0


def _expand_one_of(errors: list, doc: dict) -> list:
    """Replace "not valid under any of the schemas" by the errors of the branch the item was meant as."""
    import jsonschema_rs

    out = []
    for err in errors:
        if type(err.kind).__name__ != "OneOfNotValid":
            out.append(err)
            continue
        path = tuple(err.instance_path)
        item = messages.value_at(doc, path)
        branch = messages.schema_at(SLICE_SCHEMA, path[:-1])["items"]["oneOf"][_branch(item)]
        for sub in jsonschema_rs.validator_for(branch).iter_errors(item):
            out.append(_SubError(path + tuple(sub.instance_path), sub.kind, sub.message))
    return out


# --- checks no schema can express ----------------------------------------------------------------


def link_problem(link: str, allow_local: bool, section: str) -> str | None:
    """Why a link is refused without touching the network (DNS checks happen when fetching)."""
    parts = urlsplit(link)
    if not parts.scheme and section == "HuggingFace" and HF_REPO.fullmatch(link):
        return None  # ORG/NAME on the public hub
    if allow_local and (not parts.scheme or parts.scheme == "file"):
        return None  # a local path or file URL, for tests and private mirrors
    if parts.scheme not in ("https", "http") or not parts.hostname:
        if not parts.scheme:
            return "links must be https URLs (a local path needs --allow-local-sources)"
        return f"links must be https URLs, not {parts.scheme}:"
    if parts.username or parts.password:
        return "links must not contain a user name or password; credentials never go in data files"
    host = parts.hostname.rstrip(".").lower()
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    local = (ip is not None and not ip.is_global) or host == "localhost" or host.endswith(
        (".localhost", ".local", ".internal", ".home.arpa"))
    if allow_local and (local or parts.scheme == "http"):
        return None
    if local:
        return f"links must point to public hosts, not {host} (private, loopback and metadata addresses are refused)"
    if parts.scheme != "https":
        return "links must use https"
    if re.fullmatch(r"[0-9.]+|0x[0-9a-f.x]+", host):
        return f"write the host name, not a numeric address ({host})"
    if section == "HuggingFace" and host != HF_HOST and not allow_local:
        return f"Hugging Face links must be https://{HF_HOST}/datasets/ORG/NAME"
    if section == "HuggingFace" and not re.fullmatch(r"/datasets/" + HF_REPO.pattern + "/?", parts.path):
        return f"Hugging Face links must be https://{HF_HOST}/datasets/ORG/NAME"
    return None


# Licenses data is often under, for when `packaging` (which knows every SPDX id) is too old to have them.
COMMON_LICENSES = ("CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0", "CC-BY-NC-SA-4.0", "ODC-By-1.0", "ODbL-1.0",
                   "PDDL-1.0", "MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-only", "CDLA-Permissive-2.0")


def license_problem(value: object) -> str | None:
    """Why a slice's `license` is not an SPDX license expression (a warning), or None."""
    examples = "for example CC-BY-4.0, CC0-1.0, MIT or Apache-2.0; LicenseRef-<name> for any other"
    if not isinstance(value, str):
        return None  # the schema reports the type
    try:
        from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
    except ImportError:  # packaging < 24.2
        ok = value in COMMON_LICENSES or re.fullmatch(r"LicenseRef-[A-Za-z0-9.-]+", value) is not None
    else:
        try:
            ok = bool(canonicalize_license_expression(value))
        except InvalidLicenseExpression:
            ok = False
    return None if ok else f"license {value!r} is not an SPDX license id: write one ({examples})"


def _items(doc: dict, section: str) -> list:
    value = doc.get(section)
    return value if isinstance(value, list) else []


def _control_token_message(token: str) -> str:
    return (f"the text contains {token!r}, which chat templates read as a control token (it could forge a turn "
            "or end the answer); remove it, or write it with spaces (for example '< |im_start| >') if the text "
            "is about such tokens")


def _semantic_problems(doc: dict, allow_local: bool) -> list[tuple[tuple, bool, str, str]]:
    """(path, at key?, severity, message) for what the schema cannot say.

    Runs on schema-invalid documents too (skipping ill-typed parts), so every problem shows at once.
    """
    found: list[tuple[tuple, bool, str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(_items(doc, "IOPairs")):
        if not isinstance(pair, dict):
            continue
        inp, out = pair.get("input"), pair.get("output")
        if not isinstance(inp, str) or not isinstance(out, str):
            continue
        if inp.isspace():
            found.append((("IOPairs", i, "input"), False, "error", "input is only whitespace; write the text"))
        if out.isspace():
            found.append((("IOPairs", i, "output"), False, "error", "output is only whitespace; write the text"))
        for key, text in (("input", inp), ("output", out)):
            if m := CONTROL_TOKEN.search(text):
                found.append((("IOPairs", i, key), False, "error", _control_token_message(m.group())))
        first = seen.setdefault((inp, out), i)
        if first != i:
            found.append((("IOPairs", i), False, "warning", f"IOPairs[{i}] repeats IOPairs[{first}] exactly; remove one"))
    for i, entry in enumerate(_items(doc, "Preferences")):
        if isinstance(entry, dict) and "link" not in entry:
            for key in ("prompt", "chosen", "rejected"):
                if isinstance(entry.get(key), str) and entry[key].isspace():
                    found.append((("Preferences", i, key), False, "error", f"{key} is only whitespace; write the text"))
                if isinstance(entry.get(key), str) and (m := CONTROL_TOKEN.search(entry[key])):
                    found.append((("Preferences", i, key), False, "error", _control_token_message(m.group())))
            if isinstance(entry.get("chosen"), str) and entry.get("chosen") == entry.get("rejected"):
                found.append((("Preferences", i, "rejected"), False, "error",
                              "chosen and rejected are the same answer; a preference needs two different ones"))
    if (why := license_problem(doc.get("license"))) is not None:
        found.append((("license",), False, "warning", why))
    elif "license" not in doc:  # at the top of the file: the data's terms are for reviewers to see
        found.append(((), False, "warning", "no `license:`: say under which license the data may be used, as an "
                      "SPDX id (for example CC-BY-4.0, CC0-1.0, MIT or Apache-2.0)"))
    for section in ("HuggingFace", "OpenAIJsonl", "Preferences"):
        for i, entry in enumerate(_items(doc, section)):
            if not isinstance(entry, dict) or not isinstance(entry.get("link"), str):
                continue
            skip = entry.get("on_bad_rows") == "skip"
            if skip != ("max_bad_rows" in entry):
                found.append(((section, i, "on_bad_rows" if skip else "max_bad_rows"), True, "error",
                              "on_bad_rows: skip needs `max_bad_rows: N` (the most rows that may be left out)" if skip
                              else "max_bad_rows applies only with `on_bad_rows: skip`; add that or remove it"))
            why = link_problem(entry["link"], allow_local, section)
            if why:
                found.append(((section, i, "link"), False, "error", why))
                continue
            if section == "HuggingFace" and not SHA40.fullmatch(entry.get("revision") or ""):
                found.append(((section, i, "link"), False, "warning", PIN_HINTS[0]))
            if section in ("OpenAIJsonl", "Preferences") and not entry.get("sha256"):
                found.append(((section, i, "link"), False, "warning", PIN_HINTS[1]))
    return found


# --- files ---------------------------------------------------------------------------------------


def check_slice(data: bytes, path: Path, display: str, opts: ValidateOptions) -> tuple[Slice | None, list[Problem]]:
    """Check one slice file's bytes. Returns the Slice when it has no errors."""
    problems: list[Problem] = []
    if not SLICE_NAME.fullmatch(path.stem) or path.suffix != ".yaml":
        problems.append(Problem(display, 0, 0, "error", "slice files are named data/<name>.yaml, where the name "
                                "uses letters, digits, '_', '-' or '.' and starts with a letter or digit"))
    try:
        text = yamlsafe.decode(data)
        doc = yamlsafe.load(text)
    except yamlsafe.YamlError as exc:
        return None, problems + [Problem(display, e.line, e.col, "error", e.message) for e in (exc, *exc.more)]
    if doc is None:
        return None, problems + [Problem(display, 1, 1, "error", "the file is empty; add an IOPairs, HuggingFace or OpenAIJsonl section")]
    if not isinstance(doc, dict):
        return None, problems + [Problem(display, 1, 1, "error", "a slice file must be a mapping with sections "
                                         f"such as {', '.join(SECTIONS)}")]

    def at(path_: tuple, key: bool, severity: str, message: str) -> Problem:
        line, col = yamlsafe.locate(text, path_, key=key)
        return Problem(display, line, col, severity, message)

    validator = _slice_validator()
    schema_ok = validator.is_valid(doc)
    if not schema_ok:
        errors = _one_per_unknown_key(_expand_one_of(list(validator.iter_errors(doc)), doc))
        # "unknown key 'outptu'; did you mean 'output'?" already says what "missing 'output'" would.
        typo_fixes = {(tuple(e.instance_path), messages.nearest(str(e.kind.unexpected[0]),
                                                                messages.valid_keys(SLICE_SCHEMA, tuple(e.instance_path))))
                      for e in errors if type(e.kind).__name__ == "AdditionalProperties"}
        for err in errors:
            if type(err.kind).__name__ == "Required" and (tuple(err.instance_path), err.kind.property) in typo_fixes:
                continue
            path_, key, message = _schema_problem(err, doc)
            problems.append(at(path_, key, "error", message))
    for p_, key, severity, message in _semantic_problems(doc, opts.allow_local):
        problems.append(at(p_, key, severity, message))
    if not schema_ok or any(p.severity == "error" for p in problems):
        return None, problems
    return slice_from_document(path, doc), problems


def _read_slice(path: Path, opts: ValidateOptions) -> tuple[Slice | None, list[Problem]]:
    """Read one slice file (a regular file of a sane size only) and check it."""
    display = _display(path)
    data, problems = _read_regular_file(path, display)
    if data is None:
        return None, problems
    s, found = check_slice(data, path, display, opts)
    return s, problems + found


def _slice_files(data_dir: Path, display_dir: str) -> tuple[list[Path], list[Problem]]:
    """The slice files of a data folder, and problems with what else is there.

    Hidden files and folders are errors, not skipped: a pull request could hide a model folder (with
    Python in it) where a reviewer's file listing does not show it. Slice names that differ only in
    case are errors too: they collide on case-insensitive file systems.
    """
    problems = []
    files = []
    seen: dict[str, str] = {}
    for entry in sorted(data_dir.iterdir()):
        where = f"{display_dir}/{entry.name}"
        if entry.name.startswith("."):
            kind = "folder" if entry.is_dir() and not entry.is_symlink() else "file"
            problems.append(Problem(where, 0, 0, "error", f"hidden {kind} in {display_dir}/: only slice files "
                                    f"({display_dir}/<name>.yaml) belong here; remove it"))
            continue
        if entry.name in IGNORED_IN_DATA:
            continue
        if entry.is_dir() and not entry.is_symlink():
            problems.append(Problem(where, 0, 0, "error", f"folders are not allowed in {display_dir}/: a slice is one "
                                    f"file, {display_dir}/<name>.yaml; link large data instead"))
        elif entry.suffix == ".yml":
            problems.append(Problem(where, 0, 0, "error", f"rename to {entry.stem}.yaml: "
                                    "slice files end in .yaml"))
        elif entry.suffix == ".yaml" or entry.is_symlink():
            other = seen.setdefault(entry.stem.lower(), entry.name)
            if other != entry.name:
                problems.append(Problem(where, 0, 0, "error", f"slice name collides with {other} when case is "
                                        "ignored (as on macOS and Windows); rename one"))
                continue
            files.append(entry)
        else:
            problems.append(Problem(where, 0, 0, "warning",
                                    "not a slice file (data/<name>.yaml); it is ignored"))
    return files, problems


def validate(paths: list[Path] | None = None, opts: ValidateOptions | None = None) -> list[Problem]:
    """Validate slice files, data folders, training.yaml and eval suites (evals/, ``oig.data.evals``).
    No paths: data/, training.yaml and evals/ here."""
    opts = opts or ValidateOptions()
    if not paths:
        paths = [p for p in (Path("data"), Path(TRAINING_FILE), Path(evals.EVALS_DIR)) if p.exists() or p.name == "data"]
    problems = evals.validate_suites([p for p in paths if evals.is_suite_path(p) and p.exists()])
    paths = [p for p in paths if not (evals.is_suite_path(p) and p.exists())]
    slice_files: list[Path] = []
    training_files: list[Path] = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            files, found = _slice_files(path, _display(path))
            slice_files += files
            problems += found
        elif path.name == TRAINING_FILE:
            training_files.append(path)
        elif path.exists() or path.is_symlink():
            slice_files.append(path)
        else:
            problems.append(Problem(_display(path), 0, 0, "error", "no such file or folder"))
    remote_only = {p.resolve() for p in opts.remote_only or ()}
    decontaminate = overlap.EvalOverlap()  # an IOPairs input that overlaps an eval case is a warning
    for path in slice_files:
        s, found = _read_slice(path, opts)
        problems += found
        if s is not None and s.io_pairs:
            problems += decontaminate.warnings(path, _display(path), s.io_pairs)
        if s is not None and opts.remote and (opts.remote_only is None or path.resolve() in remote_only):
            # The remote check gives each unpinned link its exact pin line instead of the hint.
            problems = [p for p in problems if not (p.file == _display(path) and p.message in PIN_HINTS)]
            problems += _remote_problems(s, path, _display(path), opts)
    for path in training_files:
        display = _display(path)
        data, found = _read_regular_file(path, display)
        problems += found
        if data is None:
            continue
        # Mixture names are checked against every slice beside training.yaml, not only the ones given.
        data_dir = path.parent / "data"
        names = {p.stem for p in data_dir.glob("*.yaml")} if data_dir.is_dir() else None
        problems += parse_training_config(data, path, display, slice_names=names)[1]
    return sorted(problems, key=lambda p: (p.file, p.line, p.col, p.severity))


def _remote_problems(s: Slice, path: Path, display: str, opts: ValidateOptions) -> list[Problem]:
    """--remote: every link fetched and every row converted; each problem at the line of its link."""
    from oig.data.fetch import SourceOptions
    from oig.data.sources import RemoteLimits, check_remote

    text = yamlsafe.decode(path.read_bytes())  # read and checked a moment ago by check_slice
    # Preferences mixes inline pairs and links: the i-th link is not the i-th item.
    pref_links = [j for j, e in enumerate(_items(yamlsafe.load(text), "Preferences")) if "link" in e]

    def locate(section: str, i: int) -> tuple[int, int]:
        index = pref_links[i] if section == "Preferences" else i
        return yamlsafe.locate(text, (section, index, "link"), key=False)

    limits = RemoteLimits(max_bytes=opts.remote_max_bytes, timeout_s=opts.remote_timeout_s)
    found = check_remote(s, SourceOptions(allow_local=opts.allow_local, base_dir=opts.base_dir), limits, locate)
    return [Problem(display, p.line, p.col, p.severity, p.message) for p in found]



def load_slices(data_dir: Path, opts: ValidateOptions | None = None) -> list[Slice]:
    """Every slice in a data folder, sorted by name. Raises InvalidInput listing every error."""
    opts = opts or ValidateOptions()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InvalidInput([Problem(_display(data_dir), 0, 0, "error", "no such data folder")])
    files, problems = _slice_files(data_dir, _display(data_dir))
    slices = []
    for path in files:
        s, found = _read_slice(path, opts)
        problems += found
        if s is not None:
            slices.append(s)
    if any(p.severity == "error" for p in problems):
        raise InvalidInput(problems)
    return sorted(slices, key=lambda s: s.name)
