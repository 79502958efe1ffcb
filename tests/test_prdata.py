"""oig pr-data: a pull request brings its slices and mixture, and nothing else."""

import os
import shutil
from pathlib import Path

import pytest
import yaml

from oig.cli import main
from oig.data.prdata import apply_pull_request
from oig.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
SLICE = "IOPairs:\n  - input: a\n    output: b\n"
BRANCH_TRAINING = (
    "Training:\n  - base_model: Qwen/Qwen2.5-0.5B-Instruct\n  - lr: 0.00002\n  - hub_repo: org/model\n"
    "Mixture:\n  - greetings: 0.4\n"
)


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "data").mkdir(parents=True)
    (root / "data" / "greetings.yaml").write_text(SLICE)
    (root / "training.yaml").write_text(BRANCH_TRAINING)
    return root


def pull_request(tmp_path, training: str | None, slices: dict[str, str] | None = None) -> Path:
    pr = tmp_path / "pr"
    (pr / "data").mkdir(parents=True)
    for name, text in (slices or {"greetings.yaml": SLICE, "fix.yaml": SLICE}).items():
        (pr / "data" / name).write_text(text)
    if training is not None:
        (pr / "training.yaml").write_text(training)
    return pr


def test_slices_and_mixture_are_taken_and_every_other_setting_stays(tmp_path, checkout):
    pr = pull_request(tmp_path, BRANCH_TRAINING.replace("greetings: 0.4", "fix: 0.5") + "MixtureTotal: 30\n")
    assert apply_pull_request(pr, checkout) == []
    assert sorted(p.name for p in (checkout / "data").iterdir()) == ["fix.yaml", "greetings.yaml"]
    merged = yaml.safe_load((checkout / "training.yaml").read_text())
    assert merged["Training"] == yaml.safe_load(BRANCH_TRAINING)["Training"]
    assert merged["Mixture"] == [{"fix": 0.5}] and merged["MixtureTotal"] == 30
    assert not any(p.name.startswith(".data") for p in checkout.iterdir())  # no staging left behind


def test_a_pull_request_without_training_yaml_keeps_the_branchs(tmp_path, checkout):
    apply_pull_request(pull_request(tmp_path, None), checkout)
    assert (checkout / "training.yaml").read_text() == BRANCH_TRAINING


def test_the_same_settings_spelled_differently_are_not_a_change(tmp_path, checkout):
    same = ("Training:\n  base_model: Qwen/Qwen2.5-0.5B-Instruct\n  learning_rate: 0.00002\n  hub_repo: org/model\n"
            "Mixture: {fix: 1}\n")
    apply_pull_request(pull_request(tmp_path, same), checkout)
    assert yaml.safe_load((checkout / "training.yaml").read_text())["Mixture"] == {"fix": 1}


def test_changed_settings_are_refused_in_one_error_listing_the_keys(tmp_path, checkout):
    evil = ("Training:\n  - base_model: evil/model\n  - lr: 0.00002\n  - hub_repo: evil/exfiltrate\n"
            "  - backend: together\n  - method: dpo\n  - epochs: 50\nMixture:\n  - fix: 1\n")
    pr = pull_request(tmp_path, evil)
    with pytest.raises(InvalidInput) as exc:
        apply_pull_request(pr, checkout)
    [problem] = exc.value.problems
    assert problem.file == "training.yaml (pull request)"
    assert "changes: backend, base_model, hub_repo, method, num_train_epochs." in problem.message
    assert "merge the pull request and train its branch" in problem.message
    # Nothing in the checkout changed.
    assert (checkout / "training.yaml").read_text() == BRANCH_TRAINING
    assert sorted(p.name for p in (checkout / "data").iterdir()) == ["greetings.yaml"]


def test_removing_a_setting_is_a_change_too(tmp_path, checkout):
    with pytest.raises(InvalidInput) as exc:
        apply_pull_request(pull_request(tmp_path, "Mixture:\n  - fix: 1\n"), checkout)
    assert "changes: base_model, hub_repo, learning_rate." in exc.value.problems[0].message


def test_anything_but_top_level_slice_files_is_refused(tmp_path, checkout):
    pr = pull_request(tmp_path, None, {"fix.yaml": SLICE, "README.md": "about the data\n", "notes.txt": "x"})
    (pr / "data" / ".evil").mkdir()
    (pr / "data" / ".evil" / "modeling_evil.py").write_text("import os\n")
    (pr / "data" / "models").mkdir()
    (pr / "data" / "link.yaml").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput) as exc:
        apply_pull_request(pr, checkout)
    assert {(p.file, p.message.split(" ")[0]) for p in exc.value.problems} == {
        ("data/.evil", "hidden"), ("data/models", "folders"), ("data/link.yaml", "symbolic"), ("data/notes.txt", "only")}
    assert sorted(p.name for p in (checkout / "data").iterdir()) == ["greetings.yaml"]


def test_a_broken_pull_request_training_yaml_is_reported_with_its_line(tmp_path, checkout):
    pr = pull_request(tmp_path, "Training:\n  - lr: 0.00002\n  - trust_remote_code: true\n")
    with pytest.raises(InvalidInput) as exc:
        apply_pull_request(pr, checkout)
    assert any(p.line == 3 and "trust_remote_code" in p.message for p in exc.value.problems)


def test_cli_exit_codes_and_github_annotations(tmp_path, checkout, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    pr = pull_request(tmp_path, BRANCH_TRAINING.replace("org/model", "evil/model"))
    assert main(["pr-data", str(pr), "--root", str(checkout), "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("::error file=training.yaml (pull request),line=1") and "hub_repo" in out
    assert "hub_repo" in (tmp_path / "summary.md").read_text()
    shutil.rmtree(pr)
    pr = pull_request(tmp_path, None)
    assert main(["pr-data", str(pr), "--root", str(checkout)]) == 0
    assert "every other setting is the branch's" in capsys.readouterr().err
    os.chdir(tmp_path)
    assert main(["pr-data", "missing", "--root", str(checkout)]) == 1


BRANCH_EVAL = "Eval:\n  suites: evals\n  lm_eval: {tasks: [hellaswag], limit: 100}\nGate:\n  max_drop: 0.05\n"


def test_a_pull_request_may_not_change_eval_or_gate(tmp_path, checkout):
    (checkout / "training.yaml").write_text(BRANCH_TRAINING + BRANCH_EVAL)
    looser = BRANCH_TRAINING + ("Eval:\n  suites: evals\n  lm_eval: {tasks: [hellaswag], limit: 1}\n"
                                "Gate:\n  max_drop: 1\n  max_bugs_regressed: 100\n")
    with pytest.raises(InvalidInput) as exc:
        apply_pull_request(pull_request(tmp_path, looser), checkout)
    [problem] = exc.value.problems
    assert "changes: Eval.lm_eval, Gate.max_bugs_regressed, Gate.max_drop." in problem.message
    # Dropping the sections is a change too.
    with pytest.raises(InvalidInput) as exc:
        apply_pull_request(pull_request(tmp_path / "second", BRANCH_TRAINING), checkout)
    assert "changes: Eval.lm_eval, Eval.suites, Gate.max_drop." in exc.value.problems[0].message
    assert (checkout / "training.yaml").read_text() == BRANCH_TRAINING + BRANCH_EVAL


def test_the_branchs_eval_and_gate_stay_in_the_merged_training_yaml(tmp_path, checkout):
    (checkout / "training.yaml").write_text(BRANCH_TRAINING + BRANCH_EVAL)
    same = BRANCH_TRAINING.replace("greetings: 0.4", "fix: 0.5") + (
        "Eval:\n  - suites: evals\n  - lm_eval: {tasks: [hellaswag], limit: 100}\nGate: {max_drop: 0.05}\n")
    assert apply_pull_request(pull_request(tmp_path, same), checkout) == []
    merged = yaml.safe_load((checkout / "training.yaml").read_text())
    assert merged["Eval"] == yaml.safe_load(BRANCH_EVAL)["Eval"] and merged["Gate"] == {"max_drop": 0.05}
    assert merged["Mixture"] == [{"fix": 0.5}]


def test_the_launch_and_the_trackers_are_the_branchs(tmp_path, checkout):
    """distributed, distributed_offload and report_to are trusted on the branch (a maintainer set them) and
    a pull request may neither change nor add nor drop them: it would pick the runner's launch or send
    its logs somewhere."""
    branch = BRANCH_TRAINING.replace("  - hub_repo: org/model\n", "  - hub_repo: org/model\n  - distributed: zero3\n"
                                     "  - report_to: wandb\n")
    (checkout / "training.yaml").write_text(branch)
    changed = branch.replace("distributed: zero3", "distributed: fsdp").replace("report_to: wandb",
                                                                             "report_to: [wandb, tensorboard]")
    added = branch.replace("  - report_to: wandb\n", "  - report_to: wandb\n  - distributed_offload: all\n")
    dropped = changed.replace("  - distributed: fsdp\n", "")
    cases = ((changed, "distributed, report_to"), (dropped, "distributed, report_to"), (added, "distributed_offload"))
    for n, (pr_text, keys) in enumerate(cases):
        with pytest.raises(InvalidInput) as exc:
            pr = pull_request(tmp_path / str(n), pr_text.replace("greetings: 0.4", "fix: 1"))
            apply_pull_request(pr, checkout)
        assert f"changes: {keys}." in exc.value.problems[0].message
    assert (checkout / "training.yaml").read_text() == branch
    # The same settings with the pull request's mixture: taken, and the branch's launch and trackers kept.
    apply_pull_request(pull_request(tmp_path / "same", branch.replace("greetings: 0.4", "fix: 1")), checkout)
    merged = yaml.safe_load((checkout / "training.yaml").read_text())
    assert {"distributed": "zero3"} in merged["Training"] and {"report_to": "wandb"} in merged["Training"]
    assert merged["Mixture"] == [{"fix": 1}]
