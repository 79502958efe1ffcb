from pathlib import Path

import pytest

from oig.data.config import load_training_config, parse_training_config
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
    assert any(line == 4 and "'epochs' must be a number above 0 and at most 100, not text ('two')" in m for line, m in got)
    assert (5, "unknown Training key 'lerning_rate'; did you mean 'learning_rate'?") in got
    assert any(line == 6 and "'optim' must be" in m for line, m in got)
    assert (9, "the weight of slice 'b' must be a number >= 0, not -1") in got
    assert (10, "Mixture names slice 'zz', but there is no data/zz.yaml") in got
    assert (11, "the weight of slice 'c' must be a number >= 0, not 'yes'") in got
    assert any(line == 12 and "did you mean 'Mixture'?" in m for line, m in got)
    assert (13, "MixtureTotal must be a whole number from 1 to 10,000,000, not 0") in got


def test_weights_above_one_and_slices_without_share_warn():
    config, problems = parse("Mixture:\n  a: 0.8\n  b: 0.4\n  c: 0\n", {"a", "b", "c", "d"})
    assert config is not None
    messages = [p.message for p in problems if p.severity == "warning"]
    assert any("add up to 1.2" in m for m in messages)
    assert any("slice 'c' gets no share" in m for m in messages)
    assert any("slice 'd' gets no share" in m for m in messages)


def test_weights_below_one_with_every_slice_listed_are_scaled_up_with_a_warning():
    config, problems = parse("Mixture:\n  a: 0.2\n  b: 0.2\n", {"a", "b"})
    assert config is not None and [(p.line, p.severity, p.message) for p in problems] == [
        (1, "warning", "Mixture weights add up to 0.4, less than 1, and every slice is listed: they are scaled up "
                       "to add up to 1 (each weight divided by 0.4)")]
    assert parse("Mixture:\n  a: 0.2\n  b: 0.2\n", {"a", "b", "c"})[1] == []  # c takes the rest
    assert parse("Mixture:\n  a: 0.5\n  b: 0.5\n", {"a", "b"})[1] == []


def test_missing_file_means_defaults_and_errors_raise(tmp_path):
    assert load_training_config(tmp_path / "training.yaml").mixture is None
    (tmp_path / "training.yaml").write_text("Training: [1, 2]\n")
    with pytest.raises(InvalidInput) as exc:
        load_training_config(tmp_path / "training.yaml")
    assert "one `key: value` mapping" in exc.value.problems[0].message


def test_trust_remote_code_is_refused_wherever_it_is():
    config, problems = parse(
        "Training:\n  trust_remote_code: true\n  model_init_kwargs: {trust_remote_code: true, dtype: bfloat16}\n"
        "  dataset_kwargs: {inner: {trust_remote_code: false}}\n  model_init_kwargs_typo: 1\n")
    assert config is None
    refused = [(p.line, p.message) for p in problems if "trust_remote_code" in p.message]
    assert [line for line, _ in refused] == [2, 3, 4]
    assert all("is not allowed: oig never runs code that comes with a model" in m for _, m in refused)


def test_model_init_kwargs_take_only_what_loading_needs():
    config, problems = parse("Training:\n  model_init_kwargs:\n    dtype: bfloat16\n    attn_implementation: sdpa\n")
    assert problems == [] and config.training["model_init_kwargs"] == {"dtype": "bfloat16", "attn_implementation": "sdpa"}
    config, problems = parse("Training:\n  model_init_kwargs:\n    token: hf_x\n    cache_dir: /tmp\n"
                             "    attn_implementation: kernels-community/flash-attn\n")
    assert config is None
    got = {(p.line, p.message.split(" (")[0]) for p in problems}
    assert (3, "model_init_kwargs key 'token' is not allowed") in got
    assert (4, "model_init_kwargs key 'cache_dir' is not allowed") in got
    config, problems = parse('Training:\n  model_init_kwargs: \'{"dtype": "float32"}\'\n')
    assert config is None and "must be a mapping of dtype" in problems[0].message


@pytest.mark.parametrize(("line", "fragment"), [
    ("batch_size: 0", "'batch_size' must be a whole number at least 1 and at most 4,096, not 0"),
    ("per_device_eval_batch_size: -2", "at least 1"),
    ("gradient_accumulation_steps: 100000", "at most 4,096"),
    ("lr: -0.001", "'lr' must be a number above 0 and at most 1, not -0.001"),
    ("learning_rate: 0", "above 0"),
    ("epochs: 1000", "at most 100"),
    ("max_steps: 100000000", "at most 1,000,000"),
    ("save_total_limit: null", "'save_total_limit' must be a whole number at least 1 and at most 20"),
    ("save_total_limit: 0", "at least 1"),
    ("dataloader_num_workers: 512", "at most 16"),
    ("dataset_num_proc: 0", "at least 1"),
    ("save_steps: 0", "above 0"),
    ("max_length: 0", "at least 1"),
    ("report_to: mlflow", "'report_to' must be none, trackio, wandb, tensorboard or a list of them, not 'mlflow'"),
    ("report_to: [tensorboard, comet_ml]", "'report_to' must be none, trackio, wandb, tensorboard"),
    ("report_to: all", "'report_to' must be none"),  # every installed tracker: never implicit
    ("trackio_space_id: me/space", "'trackio_space_id' is not allowed: where a tracker logs is the maintainers'"),
    ("deepspeed: ds_config.json", "'deepspeed' is not allowed: the runner's launch configuration decides the "
     "distributed set-up: set `distributed: ddp`, `fsdp`, `zero2` or `zero3` instead"),
    ("fsdp: full_shard", "'fsdp' is not allowed"),
    ("fsdp_config: {min_num_params: 1}", "'fsdp_config' is not allowed"),
    ("accelerator_config: {split_batches: true}", "'accelerator_config' is not allowed"),
    ("distributed: tp", "'distributed' must be one of 'ddp', 'fsdp', 'zero2', 'zero3'"),
    ("distributed: configs/accelerate/zero3.yaml", "'distributed' must be one of"),  # never a path
    ("distributed_offload: nvme", "'distributed_offload' must be one of 'none', 'optimizer', 'all'"),
    ("chat_template_path: /etc/passwd", "'chat_template_path' is not allowed: it names a file on the runner"),
    ("liger_kernel_config: {rope: true}", "'liger_kernel_config' is not allowed: `use_liger_kernel: true`"),
    ("push_to_hub: true", "'push_to_hub' is not allowed: oig publishes the model itself"),
    ("hub_model_id: evil/model", "'hub_model_id' is not allowed"),
    ("resume_from_checkpoint: /tmp/x", "'resume_from_checkpoint' is not allowed"),
    ("torch_compile_backend: evil", "'torch_compile_backend' is not allowed"),
])
def test_settings_that_burn_resources_or_crash_later_are_errors_now(line, fragment):
    config, problems = parse(f"Training:\n  {line}\n")
    assert config is None
    [problem] = problems
    assert problem.line == 2 and fragment in problem.message, problem.message


def test_distributed_trackers_and_kernels_are_the_branchs_to_set():
    config, problems = parse("Training:\n  - distributed: zero3\n  - distributed_offload: all\n"
                             "  - report_to: [trackio, tensorboard]\n  - use_liger_kernel: true\n")
    assert problems == []
    assert config.oig == {"distributed": "zero3", "distributed_offload": "all"}
    assert config.training == {"report_to": ["trackio", "tensorboard"], "use_liger_kernel": True}
    config, problems = parse("Training:\n  distributed: fsdp\n  distributed_offload: all\n  report_to: wandb\n")
    assert problems == [] and config.training["report_to"] == "wandb"


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("distributed_offload: optimizer", 2, "distributed_offload: optimizer needs `distributed: fsdp`, `zero2` or"),
    ("distributed: ddp\n  distributed_offload: all", 3, "needs `distributed: fsdp`"),
    ("distributed: fsdp\n  distributed_offload: optimizer", 3, "FSDP offloads the weights, gradients and optimizer"),
    ("distributed: zero2\n  distributed_offload: all", 3, "ZeRO-2 does not shard the weights"),
    ("distributed: zero3\n  method: dpo", 2, "method: dpo copies the model as its reference, which zero3 cannot"),
    ("distributed: fsdp\n  lora: true", 2, "LoRA adapters are merged into the saved model"),
    ("distributed: zero3\n  load_in_4bit: true", 2, "use `distributed: ddp` or `zero2` with lora"),
    ("distributed: zero2\n  backend: together", 2, "backend: together trains on Together's machines"),
    ("distributed: fsdp\n  packing: true", 3, "set `model_init_kwargs: {attn_implementation: flash_attention_2}`"),
])
def test_distributed_settings_that_cannot_go_together(text, line, fragment):
    config, problems = parse(f"Training:\n  {text}\n")
    assert config is None
    [problem] = problems
    assert (problem.line, fragment in problem.message) == (line, True), problem.message


def test_what_goes_with_distributed():
    for text in ("distributed: zero2\n  method: dpo\n  lora: true", "distributed: zero3\n  distributed_offload: "
                 "optimizer", "distributed: fsdp\n  packing: true\n  model_init_kwargs: {attn_implementation: "
                 "flash_attention_2}", "distributed: ddp\n  load_in_4bit: true"):
        assert parse(f"Training:\n  {text}\n")[1] == [], text


def test_mixture_total_has_an_absolute_cap():
    config, problems = parse("MixtureTotal: 10000001\n")
    assert config is None and "from 1 to 10,000,000" in problems[0].message
    config, problems = parse("MixtureTotal: 10000000\n")
    assert problems == [] and config.mixture_total == 10_000_000


def test_the_shipped_defaults_stay_within_the_bounds():
    config, problems = parse("Training:\n  report_to: none\n  save_total_limit: 2\n  max_steps: -1\n  epochs: 3\n")
    assert problems == [] and config.training["report_to"] == "none"


def test_eval_and_gate_sections_map_onto_dataclasses():
    config, problems = parse(
        "Eval:\n  suites: evals/chat\n  compare: false\n  lm_eval:\n    tasks: [hellaswag, oig_tiny_mc]\n"
        "    limit: 50\n    num_fewshot: 0\n    include_path: tests/data/lmeval\n"
        "  judge: {model: judge-7b, base_url: 'http://127.0.0.1:8000', api_key_env: JUDGE_KEY}\n"
        "  comparison_suite: chat\n"
        "Gate:\n  max_drop: {math: 0.02, default: 0.05}\n  max_bugs_regressed: 1\n  min_win_rate: 0.45\n")
    assert problems == []
    ev, gate = config.eval, config.gate
    assert (ev.suites, ev.compare, ev.comparison_suite) == ("evals/chat", False, "chat")
    assert (ev.lm_eval.tasks, ev.lm_eval.limit, ev.lm_eval.num_fewshot, ev.lm_eval.batch_size) == (
        ["hellaswag", "oig_tiny_mc"], 50, 0, 1)
    assert ev.lm_eval.include_path == "tests/data/lmeval"
    assert (ev.judge.model, ev.judge.base_url, ev.judge.api_key_env) == ("judge-7b", "http://127.0.0.1:8000", "JUDGE_KEY")
    assert (gate.allowed_drop("math"), gate.allowed_drop("chat"), gate.max_bugs_regressed, gate.min_win_rate) == (
        0.02, 0.05, 1, 0.45)


def test_eval_and_gate_defaults_and_the_list_form():
    config, problems = parse("Training: {lr: 0.001}\n")
    assert problems == []
    assert (config.eval.suites, config.eval.compare, config.eval.lm_eval, config.eval.judge) == ("evals", True, None, None)
    assert (config.gate.max_drop, config.gate.max_bugs_regressed, config.gate.min_win_rate) == ({}, 0, None)
    assert config.gate.allowed_drop("any") is None
    config, problems = parse("Eval:\n  - compare: false\nGate:\n  - max_drop: 0.1\n")
    assert problems == []
    assert (config.eval.compare, config.gate.allowed_drop("any")) == (False, 0.1)


def test_eval_and_gate_mistakes_name_the_nearest_key_with_lines():
    config, problems = parse(
        "Eval:\n  lm_eval:\n    tasks: [a]\n    limt: 3\n  judje: {}\n  compare: yes please\n"   # lines 1-6
        "Gate:\n  max_drop: {math: 2, default: x}\n  max_bugs_regresed: 1\nEvals: {}\n")       # lines 7-10
    assert config is None
    got = {(p.line, p.message) for p in problems}
    assert got == {
        (4, "unknown key 'limt' at Eval.lm_eval; did you mean 'limit'? (valid keys: tasks, limit, num_fewshot, "
            "batch_size, include_path)"),
        (5, "unknown key 'judje' at Eval; did you mean 'judge'? (valid keys: suites, compare, lm_eval, judge, "
            "comparison_suite)"),
        (6, "Eval.compare must be true or false, not text ('yes please')"),
        (8, "Gate.max_drop.math must be a number at least 0 and at most 1, not 2"),
        (8, "Gate.max_drop.default must be a number at least 0 and at most 1, not text ('x')"),
        (9, "unknown key 'max_bugs_regresed' at Gate; did you mean 'max_bugs_regressed'? (valid keys: max_drop, "
            "max_bugs_regressed, min_win_rate)"),
        (10, "unknown section 'Evals'; did you mean 'Eval'? (sections: Training, Mixture, MixtureTotal, Eval, Gate)"),
    }


@pytest.mark.parametrize(("text", "fragment"), [
    ("Eval:\n  suites: /etc\n", "Eval.suites must be a folder in the repository"),
    ("Eval:\n  lm_eval: {tasks: [a], include_path: ../x}\n", "Eval.lm_eval.include_path must be a folder in the"),
    ("Eval:\n  lm_eval: {limit: 3}\n", "Eval.lm_eval is missing the required key 'tasks'"),
    ("Eval:\n  lm_eval: {tasks: []}\n", "Eval.lm_eval.tasks is empty"),
    ("Eval:\n  judge: {model: m, base_url: 'ftp://x'}\n  comparison_suite: c\n", "must be an http:// or https:// URL"),
    ("Eval:\n  judge: {model: m, base_url: 'http://x', api_key_env: sk-123}\n  comparison_suite: c\n",
     "an environment variable's name"),
    ("Eval:\n  judge: {model: m, base_url: 'http://x'}\n", "Eval.judge needs Eval.comparison_suite too"),
    ("Gate:\n  min_win_rate: 0.5\n", "Gate.min_win_rate needs a judged comparison"),
    ("Gate:\n  max_drop: .nan\n", "Gate.max_drop must be a finite number, not nan"),
    ("Gate:\n  max_bugs_regressed: -1\n", "Gate.max_bugs_regressed must be a whole number at least 0"),
])
def test_eval_and_gate_values_that_cannot_work_are_errors(text, fragment):
    config, problems = parse(text)
    assert config is None
    assert any(fragment in p.message and p.line > 1 for p in problems), [p.message for p in problems]
