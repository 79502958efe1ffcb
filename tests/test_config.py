from pathlib import Path

import pytest

from oig.config import load_training_config, parse_training_config
from oig.errors import InvalidInput

SLICES = {"pile", "soda", "a", "b", "c"}


def parse(text: str, names=SLICES):
    return parse_training_config(text.encode(), Path("training.yaml"), slice_names=names)


def test_the_seed_form_is_accepted():
    config, problems = parse("Training:\n  - lr: 0.0001\n  - momentum: 0.99\nMixture:\n  - pile: 0.5\n  - soda: 0.5\n",
                             {"pile", "soda"})
    assert problems == []
    assert config.training == {"learning_rate": 0.0001}
    assert config.oig == {"momentum": 0.99}
    assert config.mixture == {"pile": 0.5, "soda": 0.5}
    assert config.seed == 42


def test_plain_mappings_aliases_and_oig_keys():
    config, problems = parse(
        "Training:\n  base_model: tiny\n  epochs: 2\n  batch_size: 4\n  packing: true\n  seed: 7\n"
        "  eval_size: 0.2\n  lora: true\nMixture:\n  a: 0.5\nMixtureTotal: 300\n"
    )
    assert [p.severity for p in problems] == []
    assert config.base_model == "tiny"
    assert config.training == {"num_train_epochs": 2, "per_device_train_batch_size": 4, "packing": True, "seed": 7}
    assert config.oig == {"eval_size": 0.2, "lora": True}
    assert (config.mixture, config.mixture_total, config.seed) == ({"a": 0.5}, 300, 7)


def test_every_problem_is_reported_with_its_line_and_a_fix():
    config, problems = parse(
        "Training:\n  lr: 1e-4\n  learning_rate: 0.1\n  epochs: two\n  lerning_rate: 3\n  optim: 5\n"
        "Mixture:\n  a: 0.7\n  b: -1\n  zz: 0.5\n  c: yes\nMixtur: {}\nMixtureTotal: 0\n"
    )
    assert config is None
    got = {(p.line, p.message) for p in problems}
    assert (3, "'learning_rate' sets learning_rate, which 'lr' already sets; keep one") in got
    assert any(line == 4 and "'epochs' must be a number, not text ('two')" in m for line, m in got)
    assert (5, "unknown Training key 'lerning_rate'; did you mean 'learning_rate'?") in got
    assert any(line == 6 and "'optim' must be" in m for line, m in got)
    assert (9, "the weight of slice 'b' must be a number >= 0, not -1") in got
    assert (10, "Mixture names slice 'zz', but there is no data/zz.yaml") in got
    assert (11, "the weight of slice 'c' must be a number >= 0, not 'yes'") in got
    assert any(line == 12 and "did you mean 'Mixture'?" in m for line, m in got)
    assert (13, "MixtureTotal must be a whole number >= 1, not 0") in got


def test_weights_above_one_and_slices_without_share_warn():
    config, problems = parse("Mixture:\n  a: 0.8\n  b: 0.4\n  c: 0\n", {"a", "b", "c", "d"})
    assert config is not None
    messages = [p.message for p in problems if p.severity == "warning"]
    assert any("add up to 1.2" in m for m in messages)
    assert any("slice 'c' gets no share" in m for m in messages)
    assert any("slice 'd' gets no share" in m for m in messages)


def test_missing_file_means_defaults_and_errors_raise(tmp_path):
    assert load_training_config(tmp_path / "training.yaml").mixture is None
    (tmp_path / "training.yaml").write_text("Training: [1, 2]\n")
    with pytest.raises(InvalidInput) as exc:
        load_training_config(tmp_path / "training.yaml")
    assert "one `key: value` mapping" in exc.value.problems[0].message
