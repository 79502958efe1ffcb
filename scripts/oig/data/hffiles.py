"""Which files of a Hugging Face dataset make a config's split, as the ``datasets`` library picks them,
with no network and without importing it.

The README's YAML ``configs:`` with ``data_files`` (or ``data_dir``) when present; otherwise the library's
defaults (``default_splits``): sharded ``data/{split}-00000-of-00002.*`` names, else folders named after a
split (``train/``, ``test/``), else file names (``train.jsonl``, ``my_test-1.csv``), else every file is
``train``. A named config without ``configs:`` is the folder ``{config}/``. Of several formats for one
split, the most common is read (parquet on a draw). ``oig.data.hf`` lists the files and reads them.
"""

from __future__ import annotations

import re

from oig import yamlsafe
from oig.data import formats
from oig.errors import FetchError


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
    if isinstance(value, dict):  # refused by `datasets` too
        raise bad(f"config {name!r}: `data_files` must be a pattern, a list of patterns, or a list of "
                  "`split:`/`path:` entries, not a mapping of splits")
    raise bad(f"config {name!r} has no `data_files`")


def pick_files(names: list[str], config: str | None, split: str,
               configs: list[dict] | None) -> tuple[list[str], str]:
    """(files, format) making ``split`` of ``config``. Raises FetchError saying what exists instead."""
    if not configs:
        return _files_by_convention(names, config, split)
    return _files_from_configs(names, config, split, configs)


def _files_from_configs(names: list[str], config: str | None, split: str,
                        configs: list[dict]) -> tuple[list[str], str]:
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
        return _inside(names, chosen["data_dir"].strip("/") + "/", split)
    splits = _data_files(chosen, bad)
    if split not in splits:
        raise FetchError(f"config {chosen.get('config_name', 'default')!r} has no split {split!r}; "
                         f"it has {', '.join(map(repr, splits))}")
    # `datasets` reads data_files relative to the config's data_dir, and skips what its defaults skip.
    folder = chosen["data_dir"].strip("/") + "/" if isinstance(chosen.get("data_dir"), str) else ""
    globs = [(folder + p.removeprefix("./"), _glob(folder + p.removeprefix("./"))) for p in splits[split]]
    files = [n for n in names if any(r.fullmatch(n) and _requested(n, g) for g, r in globs)]
    if not files:
        raise FetchError(f"no file matches the `data_files` of split {split!r} ({', '.join(splits[split])})")
    # Unlike its defaults, `datasets` reads every file data_files names with one reader: mixed formats fail.
    readers = sorted({MODULE_OF_EXTENSION.get(_ext(n), _ext(n)) for n in files
                      if _ext(n) in MODULE_OF_EXTENSION or _ext(n) in OTHER_READERS})
    if len(readers) > 1:
        raise FetchError(f"the `data_files` of split {split!r} ({', '.join(splits[split])}) match files of "
                         f"several formats ({', '.join(r.lstrip('.') for r in readers)}), which `datasets` cannot "
                         "read together; narrow the pattern to one format (for example *.jsonl)")
    return _one_format(files, split)


# The `datasets` library's data-files conventions (datasets 5.2, ``datasets.data_files``), mirrored
# without importing it: tests/test_hf_layouts.py builds the Hub's documented layouts and checks that
# oig picks exactly the files ``get_data_patterns`` + ``DataFilesDict.from_patterns`` pick.
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SEP = "[-._ 0-9]"
_SHARDED = re.compile(r"data/(?P<split>[^/]+)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*")
_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")
_FILENAME_PATTERNS = ("**/{k}" + _SEP + "*", "**/*" + _SEP + "{k}" + _SEP + "*")
_DIR_PATTERNS = ("**/{k}/**", "**/{k}" + _SEP + "*/**", "**/*" + _SEP + "{k}/**", "**/*" + _SEP + "{k}" + _SEP + "*/**")
DEFAULT_PATTERNS = [  # the first of these that matches a file decides the splits
    {"logs": ["**/*.eval"]},
    {"test": ["**/task.toml", "**/instruction.md"]},
    {split: [p.format(k=k) for k in keywords for p in _DIR_PATTERNS] for split, keywords in SPLIT_KEYWORDS.items()},
    {split: [p.format(k=k) for k in keywords for p in _FILENAME_PATTERNS] for split, keywords in SPLIT_KEYWORDS.items()},
    {"train": ["**"]},
]
FILES_TO_IGNORE = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip",
                   "dataset_dict.json"}
# datasets picks a split's reader by its most common file extension, parquet first on a draw.
MODULE_OF_EXTENSION = {".parquet": "parquet", ".geoparquet": "parquet", ".gpq": "parquet", ".jsonl": "json",
                       ".json": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv"}
EXTENSION_RANK = (".parquet", ".lance", ".vortex", ".arrow", ".jsonl", ".json", ".csv")


def default_splits(names: list[str]) -> dict[str, list[str]]:
    """split -> files, as ``datasets`` infers them for a folder without ``configs:``: sharded
    ``data/{split}-00000-of-00001.*`` names, else folders named after a split, else file names, else
    every file is ``train``. Hidden files, ``__special__`` folders and ``README.md`` (and the like) never count."""
    names = [n for n in names if _visible(n)]
    sharded = [m.group("split") for m in map(_SHARDED.fullmatch, names) if m]
    if sharded:
        found = set(sharded)
        bad = sorted(s for s in found if not _SPLIT_NAME.fullmatch(s))
        if bad:
            raise FetchError(f"split name {bad[0]!r} (from data/{bad[0]}-00000-of-...) is not a word")
        order = [s for s in SPLIT_KEYWORDS if s in found] + sorted(found - set(SPLIT_KEYWORDS))
        return {s: [n for n in names if (m := _SHARDED.fullmatch(n)) and m.group("split") == s] for s in order}
    for patterns in DEFAULT_PATTERNS:
        out = {}
        for split, globs in patterns.items():
            regexes = [_glob(g) for g in globs]
            files = [n for n in names if any(r.fullmatch(n) for r in regexes)]
            if files:
                out[split] = files
        if out:
            return out
    return {}


def _requested(name: str, pattern: str) -> bool:
    """Whether ``datasets`` keeps a file a pattern matches: hidden files and folders, ``__special__``
    folders and README.md-like files only when the pattern names them."""
    parts, globs = name.split("/"), pattern.split("/")

    def hidden(ps: list[str]) -> int:
        return sum(p.startswith(".") and set(p) != {"."} for p in ps)

    def special(ps: list[str]) -> int:
        return sum(p.startswith("__") for p in ps[:-1])

    return ((parts[-1] not in FILES_TO_IGNORE or parts[-1] == globs[-1])
            and hidden(parts) == hidden(globs) and special(parts) == special(globs))


def _visible(name: str) -> bool:
    parts = name.split("/")
    return (parts[-1] not in FILES_TO_IGNORE and not any(p.startswith(".") for p in parts)
            and not any(p.startswith("__") for p in parts[:-1]))


def _one_format(files: list[str], split: str) -> tuple[list[str], str]:
    """The files of the split that ``datasets`` reads: it picks one reader by the most common file
    extension (parquet first on a draw, then JSON lines, JSON, CSV) and reads every file that reader takes."""
    counts: dict[str, int] = {}
    for name in files:
        for suffix in name.rsplit("/", 1)[-1].split(".")[1:]:
            ext = "." + suffix.lower()
            if ext in MODULE_OF_EXTENSION or ext in OTHER_READERS:
                counts[ext] = counts.get(ext, 0) + 1
    ranked = sorted(counts, key=lambda e: (counts[e], *(e == r for r in EXTENSION_RANK), e), reverse=True)
    module = MODULE_OF_EXTENSION.get(ranked[0]) if ranked else None
    chosen = sorted(n for n in files if MODULE_OF_EXTENSION.get(_ext(n)) == module) if module else []
    if not chosen or any(_ext(n) == ".tsv" for n in chosen):
        raise FetchError(f"split {split!r} has no parquet, JSON lines, JSON or CSV files "
                         f"(found {', '.join(files[:5])}); only those are read")
    kinds = {formats.file_format(n) for n in chosen}
    return chosen, kinds.pop() if len(kinds) == 1 and None not in kinds else module


# Extensions other readers of `datasets` take (text, arrow, images, audio...): a split made mostly of
# them is read by one of those, so not by oig, even with a stray JSON file beside them.
OTHER_READERS = {"." + e for e in (
    "txt", "arrow", "lance", "vortex", "xml", "h5", "hdf5", "tar", "pdf", "png", "jpg", "jpeg", "gif", "webp",
    "bmp", "tif", "tiff", "wav", "mp3", "flac", "ogg", "opus", "mp4", "mkv", "webm", "avi", "mov", "md", "eval",
    "toml", "fasta", "fastq", "conll", "conllu", "nii", "zip")}


def _ext(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _files_by_convention(names: list[str], config: str | None, split: str) -> tuple[list[str], str]:
    if config not in (None, "default"):
        # Not a datasets convention: a named config without `configs:` is read from the folder {config}/.
        folder = f"{config}/"
        if not any(n.startswith(folder) and formats.file_format(n) for n in names):
            folders = sorted({n.split("/")[0] for n in names if "/" in n and formats.file_format(n) and _visible(n)})
            raise FetchError(f"no data files for config {config!r} (a folder {config}/); "
                             f"folders with data: {', '.join(folders) or 'none'}")
        return _inside(names, folder, split)
    splits = default_splits(names)
    if not any(formats.file_format(n) for files in splits.values() for n in files):
        hint = ""
        if any(n.endswith(".py") for n in names):
            hint = ("; dataset scripts are never run: the Hub's parquet conversion may work "
                    "(`revision: refs/convert/parquet`)")
        if not splits or not any(formats.file_format(n) and _visible(n) for n in names):
            raise FetchError(f"no parquet, JSON lines, JSON or CSV data files in this dataset{hint}")
    wanted = split.lower()
    canonical = next((c for c, aliases in SPLIT_KEYWORDS.items() if wanted in aliases), wanted)
    files = splits.get(split) or splits.get(canonical)
    if not files:
        raise FetchError(f"no data files for split {split!r}; splits found: {', '.join(splits) or 'none'}")
    return _one_format(files, split)


def _inside(names: list[str], folder: str, split: str) -> tuple[list[str], str]:
    """The conventions inside a folder (a config's ``data_dir``), with paths relative to it."""
    files, fmt = _files_by_convention([n[len(folder):] for n in names if n.startswith(folder)], None, split)
    return [folder + n for n in files], fmt


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
