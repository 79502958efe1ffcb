"""oig picks a Hugging Face dataset's files exactly as the `datasets` library does, for every layout the
Hub's documentation shows ("File names and splits", "Manual configuration", "Organize your repository").

Each layout is built as a local folder; the library's answer is ``load_dataset_builder(folder, name)``'s
``config.data_files`` (``get_data_patterns`` + ``DataFilesDict.from_patterns`` + the reader chosen by
file extension); oig's is ``hffiles.pick_files`` on the folder's file list."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from oig.data import hf, hffiles
from oig.errors import FetchError

datasets = pytest.importorskip("datasets")

ROW = {"question": "q", "answer": "a"}


def content(name: str) -> bytes:
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([ROW]), buf)
        return buf.getvalue()
    if name.endswith(".csv"):
        return b"question,answer\nq,a\n"
    if name.endswith(".json"):
        return json.dumps([ROW]).encode()
    if name.endswith(".md"):
        return b"# notes\n"
    return (json.dumps(ROW) + "\n").encode()


def readme(configs: str) -> str:
    return f"---\nconfigs:\n{configs}---\n# A dataset\n"


# layout -> (files, README.md or None, configs to ask for)
LAYOUTS = {
    "root-train-test-pair": (["train.csv", "test.csv"], None, [None]),
    "data-folder": (["data/train.jsonl", "data/test.jsonl", "data/validation.jsonl"], None, [None]),
    "root-file-beside-data-folder": (["train.jsonl", "data/extra.jsonl"], None, [None]),
    "data-folder-without-split-names": (["notes.jsonl", "data/a.jsonl", "data/b.jsonl"], None, [None]),
    "split-folders": (["train/0.jsonl", "train/1.jsonl", "test/0.jsonl", "validation/0.jsonl"], None, [None]),
    "nested-split-folders": (["data/train/en/a.jsonl", "data/train/fr/b.jsonl", "data/test/en/c.jsonl"], None, [None]),
    "split-folder-beats-file-name": (["train/a.jsonl", "test.jsonl"], None, [None]),
    "sharded-with-custom-split": (["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                                   "data/test-00000-of-00001.parquet", "data/random-00000-of-00001.parquet",
                                   "other/train.jsonl"], None, [None]),
    "train-dash-shards": (["train-0.jsonl", "train-1.jsonl", "test-0.jsonl"], None, [None]),
    "dot-split-names": (["my.train.jsonl", "my.test.jsonl", "my.validation.jsonl"], None, [None]),
    "keywords-with-separators": (["my_train_file.csv", "my-test-file.csv", "dev.csv", "mytrain.csv"], None, [None]),
    "split-aliases": (["training.csv", "valid.csv", "eval.csv"], None, [None]),
    "folder-name-with-suffix": (["train_set/a.jsonl", "test-set/b.jsonl"], None, [None]),
    "no-split-names": (["a.jsonl", "b/c.jsonl"], None, [None]),
    "hidden-and-ignored-files": ([".hidden/train.jsonl", "__pycache__/test.jsonl", "dataset_info.json",
                                  "config.json", "data.jsonl"], None, [None]),
    "most-common-format": (["train/a.jsonl", "train/b.jsonl", "train/c.parquet", "test/a.jsonl"], None, [None]),
    "format-draw-prefers-parquet": (["train.jsonl", "train.parquet"], None, [None]),
    "json-and-jsonl-together": (["train/a.json", "train/b.jsonl"], None, [None]),
    "readme-data-files": (["chat/a.jsonl", "chat/b.jsonl", "eval/chat-1.jsonl", "train.jsonl"],
                          readme("- config_name: default\n  data_files:\n  - split: train\n    path: chat/*.jsonl\n"
                                 "  - split: test\n    path: eval/*.jsonl\n"), [None]),
    "readme-configs-with-data-dir": (["en/train.jsonl", "en/test.jsonl", "fr/data/train-00000-of-00001.jsonl", "fr/data/test-00000-of-00001.jsonl"],
                                     readme("- config_name: en\n  data_dir: en\n  default: true\n"
                                            "- config_name: fr\n  data_dir: fr\n"), [None, "en", "fr"]),
    "readme-glob-across-folders": (["qa/x/y/1.parquet", "qa/2.parquet", "qa/notes.md"],
                                   readme("- config_name: qa\n  data_files: qa/**/*.parquet\n"), [None, "qa"]),
    "readme-glob-skips-metadata-files": (["a.json", "b.json", "dataset_info.json", "c.parquet"],
                                         readme("- config_name: default\n  data_files: \"*.json\"\n"), [None]),
    "readme-data-dir-with-data-files": (["en/x.jsonl", "en/y.jsonl", "z.jsonl"],
                                        readme("- config_name: default\n  data_dir: en\n  data_files:\n"
                                               "  - split: train\n    path: \"*.jsonl\"\n"), [None]),
}


def build(tmp_path: Path, files: list[str], card: str | None) -> Path:
    folder = tmp_path / "ds"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content(name))
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def library_choice(folder: Path, config: str | None) -> dict[str, list[str]]:
    builder = datasets.load_dataset_builder(str(folder), name=config)
    root = folder.resolve().as_posix() + "/"
    return {str(split): sorted({str(f).removeprefix(root) for f in files})
            for split, files in builder.config.data_files.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_oig_picks_the_files_datasets_picks(tmp_path, layout, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files, card, configs = LAYOUTS[layout]
    folder = build(tmp_path, files, card)
    names = hf._folder_files(folder)
    text = (folder / "README.md").read_text(encoding="utf-8") if card else None
    for config in configs:
        expected = library_choice(folder, config)
        for split, chosen in expected.items():
            assert hffiles.pick_files(names, config, split, hffiles.readme_configs(text, "ds"))[0] == chosen, \
                (layout, config, split)
        for split in {"train", "validation", "test"} - set(expected):  # no split that datasets does not see
            with pytest.raises(FetchError):
                hffiles.pick_files(names, config, split, hffiles.readme_configs(text, "ds"))


def test_data_files_as_a_mapping_is_refused_as_datasets_refuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = readme("- config_name: default\n  data_files:\n    train: tr/*.csv\n    test: te/*.csv\n")
    folder = build(tmp_path, ["tr/a.csv", "te/b.csv"], card)
    with pytest.raises(ValueError, match="Expected data_files in YAML"):
        datasets.load_dataset_builder(str(folder))
    with pytest.raises(FetchError, match="`data_files` must be a pattern, a list of patterns, or a list of "
                       "`split:`/`path:` entries, not a mapping of splits"):
        hffiles.readme_configs(card, "ds")


def test_a_readme_glob_over_mixed_formats_is_refused(tmp_path):
    # datasets lists all three for its json reader, which then fails on the parquet file: refused up front.
    card = readme("- config_name: default\n  data_files: all/*\n")
    names = ["README.md", "all/a.jsonl", "all/b.jsonl", "all/c.parquet"]
    assert sorted(library_choice(build(tmp_path, names[1:], card), None)["train"]) == names[1:]
    with pytest.raises(FetchError, match=r"match files of several formats \(json, parquet\).*narrow the pattern"):
        hffiles.pick_files(names, None, "train", hffiles.readme_configs(card, "ds"))
