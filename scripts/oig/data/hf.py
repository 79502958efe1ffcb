"""Hugging Face datasets as slice sources: resolve a link to a commit and its data files, read rows.

Only data files are read (parquet, JSON lines, JSON, CSV); dataset scripts are never run. This talks
to the Hub's HTTP API through ``oig.data.fetch`` rather than huggingface_hub or datasets: those follow
redirects to any host, and this path must stay light (``oig validate --remote``)::

    GET {endpoint}/api/datasets/{repo}/revision/{revision}   -> {"sha": ..., "siblings": [{"rfilename"}]}
    GET {endpoint}/datasets/{repo}/resolve/{sha}/{file}      -> the file

Which files make a config's split follows the Hub's conventions: the README's YAML ``configs:`` with
``data_files`` (or ``data_dir``) when present; otherwise files under ``{config}/`` (a named config) or ``data/`` (else
the whole repository), with the split named in the file or folder name (``train-00000-of-00002``,
``test.jsonl``, ``validation/``); when no file names a split, every file is ``train``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from oig import yamlsafe
from oig.data import download, fetch, formats, links
from oig.errors import FetchError

if TYPE_CHECKING:
    from oig.data.fetch import SourceOptions
    from oig.data.slices import HFEntry

HUB = "https://huggingface.co"
REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
SHA40 = re.compile(r"[0-9a-f]{40}")
MAX_API_BYTES = 64 * 1024 * 1024  # a revision listing; ~300k files
MAX_README_BYTES = 4 * 1024 * 1024
MAX_FILES = 300_000
MAX_PATH = 1000  # characters in one file name
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
FORMAT_PREFERENCE = ("parquet", "jsonl", "json", "csv")


@dataclass(frozen=True)
class Dataset:
    """Where a dataset lives: a Hub endpoint and repo, or a local folder (allow_local only)."""

    link: str
    endpoint: str | None = None
    repo: str | None = None
    folder: Path | None = None


@dataclass(frozen=True)
class Resolved:
    dataset: Dataset
    revision: str  # the commit sha; for a local folder, a sha256 over the chosen files' contents
    files: tuple[str, ...]  # the chosen data files, relative to the repository, in reading order
    fmt: str  # parquet | jsonl | json | csv


def parse_link(link: str, opts: SourceOptions) -> Dataset:
    """The dataset a slice's ``link`` names, with no network (every request is checked when made).

    Under allow_local an existing folder wins over a Hub name of the same spelling (ORG/NAME).
    Raises FetchError for links that are not allowed."""
    if REPO.fullmatch(link) and not (opts.allow_local and (Path(opts.base_dir) / link).is_dir()):
        return Dataset(link, HUB, link)
    if links.is_local_link(link):
        links.check_url(link, opts.allow_local)
        folder = links.local_path(link, opts.base_dir)
        if not folder.is_dir():
            raise FetchError(f"{link}: no such dataset folder")
        return Dataset(link, folder=folder)
    try:
        parts = urlsplit(link)
        port = parts.port
    except ValueError:
        port, parts = -1, urlsplit("")
    match = re.fullmatch(r"/datasets/(" + REPO.pattern + r")/?", parts.path)
    hub = parts.scheme == "https" and (parts.hostname or "").lower() == "huggingface.co" and port is None
    if not match or parts.query or parts.fragment or not (hub or opts.allow_local):
        raise FetchError(f"{link}: Hugging Face links must be {HUB}/datasets/ORG/NAME (or ORG/NAME)")
    return Dataset(link, f"{parts.scheme}://{parts.netloc}", match.group(1))


def resolve(entry: HFEntry, opts: SourceOptions) -> Resolved:
    """The commit and data files of the entry's config and split. Raises FetchError."""
    ds = parse_link(entry.link, opts)
    if ds.folder is not None:
        names = _folder_files(ds.folder)
        readme = _read_local_readme(ds.folder / "README.md") if "README.md" in names else None
        files, fmt = pick_files(names, entry.config, entry.split, readme_configs(readme, entry.link))
        return Resolved(ds, _folder_digest(ds.folder, files), tuple(files), fmt)
    sha, names = _revision_info(ds, entry.revision or "main", opts)
    readme = _hub_readme(ds, sha, opts) if "README.md" in names else None
    files, fmt = pick_files(names, entry.config, entry.split, readme_configs(readme, entry.link))
    return Resolved(ds, sha, tuple(files), fmt)


def iter_rows(resolved: Resolved, opts: SourceOptions) -> Iterator[tuple[str, object]]:
    """(where, row) for every row of the chosen files, in order; files are fetched as reached."""
    for name in resolved.files:
        if resolved.dataset.folder is not None:
            path = resolved.dataset.folder / name
        else:
            path = fetch.fetch_to_cache(file_url(resolved, name), opts, immutable=True)
        try:
            for where, row in formats.iter_rows(path, resolved.fmt):
                yield f"{name} {where}", row
        except (ValueError, OSError) as exc:
            raise FetchError(f"{resolved.dataset.link}: {name}: {exc}") from None


def file_url(resolved: Resolved, name: str) -> str:
    ds = resolved.dataset
    return f"{ds.endpoint}/datasets/{ds.repo}/resolve/{resolved.revision}/{quote(name, safe='/')}"


# --- the Hub API (answers are hostile until checked) ----------------------------------------------


def _revision_info(ds: Dataset, revision: str, opts: SourceOptions) -> tuple[str, list[str]]:
    url = f"{ds.endpoint}/api/datasets/{ds.repo}/revision/{quote(revision, safe='')}"
    # A commit's listing never changes: cached for good. A branch's follows opts.refresh.
    pinned = bool(SHA40.fullmatch(revision))
    blob = fetch.cached(url, opts, immutable=pinned)
    if blob is not None:
        try:
            return parse_revision_info(blob.read_bytes(), ds.link, revision)
        except FetchError:
            pass  # a damaged cache entry: ask again
    try:
        data = fetch.fetch_bytes(url, opts, max_bytes=min(MAX_API_BYTES, opts.max_bytes))
    except FetchError as exc:
        if "HTTP 404" in str(exc) or "HTTP 401" in str(exc):
            raise FetchError(f"{ds.link}: no such dataset or revision {revision!r} (or it is private or gated; "
                             "set HF_TOKEN for gated datasets)") from None
        raise
    sha, names = parse_revision_info(data, ds.link, revision)
    fetch.store(url, json.dumps({"sha": sha, "siblings": [{"rfilename": n} for n in names]}).encode(), opts)
    return sha, names


def parse_revision_info(data: bytes, link: str, revision: str) -> tuple[str, list[str]]:
    """(commit sha, file names) from the Hub's revision answer. Raises FetchError on anything unexpected."""

    def bad(why: str) -> FetchError:
        return FetchError(f"{link}: unexpected answer from the Hub API: {why}")

    try:
        info = json.loads(data)
    except (ValueError, RecursionError):
        raise bad("not JSON") from None
    if not isinstance(info, dict):
        raise bad("not a JSON object")
    sha = info.get("sha")
    if not isinstance(sha, str) or not SHA40.fullmatch(sha):
        raise bad("`sha` is not a 40-character commit sha")
    if SHA40.fullmatch(revision) and sha != revision:
        raise bad(f"asked for commit {revision}, got {sha}")
    siblings = info.get("siblings")
    if not isinstance(siblings, list):
        raise bad("`siblings` is not a list")
    if len(siblings) > MAX_FILES:
        raise bad(f"more than {MAX_FILES:,} files")
    names = []
    for s in siblings:
        name = s.get("rfilename") if isinstance(s, dict) else None
        if not isinstance(name, str) or not _safe_name(name):
            raise bad(f"a file name is not a safe relative path: {str(name)[:80]!r}")
        names.append(name)
    return sha, names


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return (0 < len(name) <= MAX_PATH and "\\" not in name and not any(ord(c) < 32 or ord(c) == 127 for c in name)
            and all(p not in ("", ".", "..") for p in parts))


def _hub_readme(ds: Dataset, sha: str, opts: SourceOptions) -> str:
    url = f"{ds.endpoint}/datasets/{ds.repo}/resolve/{sha}/README.md"
    blob = fetch.cached(url, opts, immutable=True)
    data = blob.read_bytes() if blob is not None else fetch.fetch_bytes(url, opts, max_bytes=MAX_README_BYTES)
    text = _decode_readme(data, ds.link)
    readme_configs(text, ds.link)  # only a readable README is cached
    if blob is None:
        fetch.store(url, data, opts)
    return text


def _read_local_readme(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_README_BYTES + 1)
    if len(data) > MAX_README_BYTES:
        raise FetchError(f"{path}: README.md is larger than {MAX_README_BYTES:,} bytes")
    return _decode_readme(data, str(path))


def _decode_readme(data: bytes, link: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FetchError(f"{link}: README.md is not UTF-8") from None


def readme_configs(readme: str | None, link: str) -> list[dict] | None:
    """The ``configs:`` list of a dataset card's YAML header, checked; None when there is none."""
    if not readme:
        return None
    m = re.match(r"---[ \t]*\r?\n(.*?)^---[ \t]*$", readme, re.DOTALL | re.MULTILINE)
    if not m:
        return None
    try:
        meta = yamlsafe.load(m.group(1))
    except yamlsafe.YamlError as exc:
        raise FetchError(f"{link}: the README.md header is not readable YAML (line {exc.line + 1}): "
                         f"{exc.message}") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if configs is None:
        return None

    def bad(why: str) -> FetchError:
        return FetchError(f"{link}: README.md `configs:` {why}")

    if not isinstance(configs, list) or not configs:
        raise bad("is not a list of configs")
    for c in configs:
        if not isinstance(c, dict) or not isinstance(c.get("config_name", "default"), str):
            raise bad("has an entry without a text `config_name`")
        if not isinstance(c.get("default", False), bool):
            raise bad(f"config {c.get('config_name')!r}: `default` is not true or false")
        if "data_files" in c or not isinstance(c.get("data_dir"), str):
            _data_files(c, bad)
    return configs


def _data_files(config: dict, bad) -> dict[str, list[str]]:
    """split -> glob patterns, from a config's ``data_files`` in any of the Hub's spellings."""
    value = config.get("data_files")
    name = config.get("config_name", "default")

    def patterns(v: object) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and v and all(isinstance(p, str) for p in v):
            return list(v)
        raise bad(f"config {name!r}: a `path` is not a file pattern or a list of them")

    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value) and value):
        return {"train": patterns(value)}
    if isinstance(value, list) and value:
        out: dict[str, list[str]] = {}
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("split", "train"), str) or "path" not in item:
                raise bad(f"config {name!r}: `data_files` entries need `split` and `path`")
            out.setdefault(item.get("split", "train"), []).extend(patterns(item["path"]))
        return out
    if isinstance(value, dict) and value:
        return {str(k): patterns(v) for k, v in value.items()}
    raise bad(f"config {name!r} has no `data_files`")


# --- choosing files ------------------------------------------------------------------------------


def pick_files(names: list[str], config: str | None, split: str,
               configs: list[dict] | None) -> tuple[list[str], str]:
    """(files, format) making ``split`` of ``config``. Raises FetchError saying what exists instead."""
    if configs:
        files = _files_from_configs(names, config, split, configs)
    else:
        files = _files_by_convention(names, config, split)
    formats_found = {formats.file_format(n) for n in files} - {None}
    fmt = next((f for f in FORMAT_PREFERENCE if f in formats_found), None)
    if fmt is None:
        raise FetchError(f"split {split!r} has no parquet, JSON lines, JSON or CSV files "
                         f"(found {', '.join(files[:5])}); only those are read")
    return sorted(n for n in files if formats.file_format(n) == fmt), fmt


def _files_from_configs(names: list[str], config: str | None, split: str, configs: list[dict]) -> list[str]:
    by_name = {c.get("config_name", "default"): c for c in configs}
    if config is not None:
        chosen = by_name.get(config)
        if chosen is None:
            raise FetchError(f"no config {config!r}; this dataset has {', '.join(map(repr, by_name))}")
    else:
        chosen = next((c for c in configs if c.get("default")), None) or by_name.get("default")
        if chosen is None and len(configs) == 1:
            chosen = configs[0]
        if chosen is None:
            raise FetchError(f"this dataset has several configs ({', '.join(map(repr, by_name))}): "
                             "add `config: <name>` to choose one")

    def bad(why: str) -> FetchError:
        return FetchError(f"README.md `configs:` {why}")

    if "data_files" not in chosen and isinstance(chosen.get("data_dir"), str):
        # A config given as a folder: the usual conventions, inside it.
        folder = chosen["data_dir"].strip("/") + "/"
        return _files_by_convention([n for n in names if n.startswith(folder)], None, split)
    splits = _data_files(chosen, bad)
    if split not in splits:
        raise FetchError(f"config {chosen.get('config_name', 'default')!r} has no split {split!r}; "
                         f"it has {', '.join(map(repr, splits))}")
    regexes = [_glob(p) for p in splits[split]]
    files = [n for n in names if any(r.fullmatch(n) for r in regexes)]
    if not files:
        raise FetchError(f"no file matches the `data_files` of split {split!r} ({', '.join(splits[split])})")
    return files


def _files_by_convention(names: list[str], config: str | None, split: str) -> list[str]:
    data = [n for n in names if formats.file_format(n) and not any(p.startswith(".") for p in n.split("/"))]
    if config not in (None, "default"):
        pool = [n for n in data if n.startswith(f"{config}/")]
        if not pool:
            folders = sorted({n.split("/")[0] for n in data if "/" in n})
            raise FetchError(f"no data files for config {config!r} (a folder {config}/); "
                             f"folders with data: {', '.join(folders) or 'none'}")
    else:
        pool = [n for n in data if n.startswith("data/")] or data
    if not pool:
        hint = ""
        if any(n.endswith(".py") for n in names):
            hint = ("; dataset scripts are never run: the Hub's parquet conversion may work "
                    "(`revision: refs/convert/parquet`)")
        raise FetchError(f"no parquet, JSON lines, JSON or CSV data files in this dataset{hint}")
    wanted = split.lower()
    canonical = next((c for c, aliases in SPLIT_ALIASES.items() if wanted in aliases), None)
    if canonical is None:
        files = [n for n in pool if wanted in _tokens(n)]
    else:
        labels = {n: split_of(n) for n in pool}
        if not any(labels.values()):
            files = pool if canonical == "train" else []
        else:
            files = [n for n in pool if labels[n] == canonical]
    if not files:
        found = sorted({s or "train" for s in map(split_of, pool)})
        raise FetchError(f"no data files for split {split!r}; splits found: {', '.join(found)}")
    return files


def split_of(name: str) -> str | None:
    """The split a file's name or folders name (train, validation, test), nearest to the file first."""
    parts = name.split("/")
    stem = parts[-1].split(".", 1)[0]
    for segment in (stem, *reversed(parts[:-1])):
        for token in re.split(r"[-._ 0-9]+", segment.lower()):
            for canonical, aliases in SPLIT_ALIASES.items():
                if token in aliases:
                    return canonical
    return None


def _tokens(name: str) -> set[str]:
    return set(re.split(r"[-._ 0-9/]+", name.lower()))


def _glob(pattern: str) -> re.Pattern:
    """A Hub ``data_files`` glob as a regex: ``*`` stays within a folder, ``**`` crosses folders."""
    pattern = pattern.removeprefix("./")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    try:
        return re.compile(out)
    except re.error:
        raise FetchError(f"README.md `data_files` pattern {pattern!r} is not a valid glob") from None


# --- local folders (allow_local) -----------------------------------------------------------------


def _folder_files(folder: Path) -> list[str]:
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(folder)
        for f in sorted(files):
            names.append((rel / f).as_posix())
            if len(names) > MAX_FILES:
                raise FetchError(f"{folder}: more than {MAX_FILES:,} files")
    return names


def _folder_digest(folder: Path, files: list[str]) -> str:
    """A content hash standing in for a commit sha: the materialized cache notices edited files."""
    digest = hashlib.sha256()
    for name in files:
        file_hash = hashlib.sha256()
        with open(folder / name, "rb") as f:
            while chunk := f.read(download.CHUNK):
                file_hash.update(chunk)
        digest.update(f"{name}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()
