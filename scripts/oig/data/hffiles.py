"""Which files of a Hugging Face dataset make a config's split, by the Hub's conventions, with no network.

The README's YAML ``configs:`` with ``data_files`` (or ``data_dir``) when present; otherwise files under
``{config}/`` (a named config) or ``data/`` (else the whole repository), with the split named in the file
or folder name (``train-00000-of-00002``, ``test.jsonl``, ``validation/``); when no file names a split,
every file is ``train``. Of several formats for one split, one is read: parquet, then JSON lines, JSON,
CSV. ``oig.data.hf`` lists the files and reads them.
"""

from __future__ import annotations

import re

from oig import yamlsafe
from oig.data import formats
from oig.errors import FetchError

SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
FORMAT_PREFERENCE = ("parquet", "jsonl", "json", "csv")


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
