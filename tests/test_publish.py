"""oig.publish.publish and the model card: local, the Hub (fake_hub) and Together (fake_together), and failures."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml
from fake_hub import FakeHub
from fake_together import FakeTogether

from oig.data.config import TrainingConfig
from oig.errors import PublishError
from oig.publish.modelcard import build_model_card, slice_info
from oig.publish.publish import publish

TOKEN = "hf_publish_secret"
TG_KEY = "tg_publish_secret"
COMMIT = "1234567890abcdef1234567890abcdef12345678"

SLICES = {
    "capitals": "license: CC0-1.0\nIOPairs:\n  - input: What is the capital of France?\n    output: Paris.\n",
    "greetings": "license: CC-BY-4.0\nIOPairs:\n  - input: Hi\n    output: Hello!\n",
    "wiki": "license: CC-BY-SA-4.0\nHuggingFace:\n  - link: https://huggingface.co/datasets/org/wiki-qa\n"
            "    revision: 0123456789abcdef0123456789abcdef01234567\n",
}


@pytest.fixture(autouse=True)
def env(monkeypatch):
    import huggingface_hub.constants
    import huggingface_hub.utils._http

    # `make test` sets HF_HUB_OFFLINE=1, which refuses even a local endpoint.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("TOGETHER_API_KEY", TG_KEY)
    for name in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "HF_ENDPOINT",
                 "TOGETHER_PROJECT_ID", "TOGETHER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A repository root: data/ with three slices (one missing from the mixture is fine), a model folder."""
    data = tmp_path / "data"
    data.mkdir()
    for name, text in SLICES.items():
        (data / f"{name}.yaml").write_text(text)
    model = tmp_path / "runs" / "r1" / "model"
    (model / "checkpoint-4").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\x00weights" * 100)
    (model / "checkpoint-4" / "optimizer.pt").write_bytes(b"state")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_run(branch: str = "main") -> dict:
    return {
        "run_id": "20261123-120000-abc123", "git_commit": COMMIT, "git_branch": branch,
        "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
        "hyperparameters": {"learning_rate": 2e-5, "num_train_epochs": 3, "per_device_train_batch_size": 8},
        "mixture": {"total": 100, "slices": [
            {"name": "capitals", "available": 40, "weight": 0.3, "share": 0.3, "count": 30, "epochs": 0.75,
             "sha256": "ab" * 32, "pins": []},
            {"name": "greetings", "available": 60, "weight": None, "share": 0.4, "count": 40, "epochs": 0.67,
             "sha256": "cd" * 32, "pins": []},
            {"name": "wiki", "available": 30, "weight": 0.3, "share": 0.3, "count": 30, "epochs": 1.0,
             "sha256": "ef" * 32, "pins": ["org/wiki-qa@0123456789ab"]},
            {"name": "gone|<b>", "available": 0, "weight": 0.0, "share": 0.0, "count": 0, "epochs": 0.0,
             "sha256": None, "pins": []},
        ]},
        "metrics": [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.75}, {"step": 2, "eval_loss": 1.9},
                    {"step": 3, "loss": 1.25}],
        "tokens_per_second": 1234.5, "duration_s": 12.3,
    }


def make_config(**oig) -> TrainingConfig:
    return TrainingConfig(path=Path("training.yaml"), training={"learning_rate": 2e-5},
                          base_model="Qwen/Qwen2.5-0.5B-Instruct", oig=oig)


# --- none and local ---------------------------------------------------------------------------------------------


def test_none_publishes_nothing(repo):
    model = repo / "runs" / "r1" / "model"
    assert publish(model, mode="none", run=make_run(), config=make_config()) is None
    assert not (model / "README.md").exists()


def test_local_records_the_folder_and_writes_the_card_beside_it(repo):
    model = repo / "runs" / "r1" / "model"
    section = publish(model, mode="local", run=make_run(), config=make_config())
    assert section == {"local_path": "runs/r1/model"}
    card = (model / "README.md").read_text()
    assert (model / "loss_curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "![Training and eval loss over steps](loss_curve.png)" in card
    assert not list(model.glob(".*"))  # no temp files left behind


def test_the_model_card_shows_the_repository_state(repo, monkeypatch):
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "community/oig")
    card = build_model_card(make_run("text2sql"), make_config(), hub_repo="org/oig-chat", branch="text2sql")
    meta, body = card.split("\n---\n", 1)
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct" in meta and "- org/wiki-qa" in meta
    assert "license: other" in meta and "- branch-text2sql" in meta and "library_name: transformers" in meta
    # The mixture table: each slice with its license; a slice with no file says unknown, safely escaped.
    assert "| capitals | CC0-1.0 | 0.3 | 30.0% | 30 | 0.75 | abababababab |  |" in body
    assert "| greetings | CC-BY-4.0 | - | 40.0% | 40 | 0.67 | cdcdcdcdcdcd |  |" in body
    assert "| wiki | CC-BY-SA-4.0 | 0.3 | 30.0% | 30 | 1.00 | efefefefefef | org/wiki-qa@0123456789ab |" in body
    assert "| gone\\|&lt;b&gt; | unknown |" in body
    assert "| **total** | | | | **100** |" in body
    assert "| learning_rate | 2e-05 |" in body and "| num_train_epochs | 3 |" in body
    assert "| final train loss (step 3) | 1.2500 |" in body and "| final eval loss (step 2) | 1.9000 |" in body
    assert "| tokens per second | 1,234 |" in body
    assert 'AutoModelForCausalLM.from_pretrained("org/oig-chat", revision="text2sql")' in body
    assert 'oig query "Hello!"' in body
    assert f"[`{COMMIT[:12]}`](https://github.com/community/oig/commit/{COMMIT})" in body
    assert "[community/oig](https://github.com/community/oig)" in body


def test_a_dpo_run_is_tagged_dpo(repo):
    meta = build_model_card({**make_run(), "method": "dpo"}, make_config()).split("\n---\n", 1)[0]
    assert "- dpo" in meta and "- sft" not in meta
    meta = build_model_card({**make_run(), "method": "sft"}, make_config()).split("\n---\n", 1)[0]
    assert "- sft" in meta and "- dpo" not in meta


def test_card_without_metrics_or_slices(repo):
    run = {"run_id": "r", "base_model": "tiny"}
    card = build_model_card(run, make_config(), data_dir=repo / "nowhere", loss_curve=None)
    assert "No mixture was recorded" in card and "No metrics were recorded" in card and "base_model" not in card
    assert "not recorded" in card


def test_licenses_survive_an_invalid_slice(repo):
    (repo / "data" / "broken.yaml").write_text("IOPairs: [oops\n")
    info = slice_info(repo / "data")
    assert info["capitals"]["license"] == "CC0-1.0" and info["wiki"]["datasets"] == [
        "https://huggingface.co/datasets/org/wiki-qa"]
    assert "broken" not in info


# --- the Hub ------------------------------------------------------------------------------------------------------


def test_hub_uploads_to_the_git_branch_and_returns_the_commit(repo, monkeypatch):
    model = repo / "runs" / "r1" / "model"
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        section = publish(model, mode="hub", run=make_run("feature/text2sql"), config=make_config(hub_repo="org/oig-chat"))
        stored = fake.files("org/oig-chat", "feature-text2sql")
        commits = fake.commits("org/oig-chat", "feature-text2sql")
        main_files = fake.files("org/oig-chat", "main")
    assert section == {"hub_repo": "org/oig-chat", "revision": commits[-1]["oid"], "branch": "feature-text2sql",
                       "endpoint": fake.url}
    assert set(stored) == {"README.md", "loss_curve.png", "config.json", "model.safetensors"}
    assert stored["README.md"] == (model / "README.md").read_bytes()
    assert b"| capitals | CC0-1.0 |" in stored["README.md"]
    assert commits[-1]["summary"] == f"oig: 20261123-120000-abc123 from {COMMIT[:12]}"
    assert main_files == {}  # a specialisation branch never overwrites main's model
    assert TOKEN not in (model / "README.md").read_text()


def test_a_failed_upload_keeps_the_model_and_raises(repo, monkeypatch):
    model = repo / "runs" / "r1" / "model"
    waits: list[float] = []
    with FakeHub(token=TOKEN, fail_commits=10**6) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(PublishError) as info:
            publish(model, mode="hub", run=make_run(), config=make_config(hub_repo="org/m"), retries=2,
                    sleep=waits.append)
    assert "HTTP 503" in str(info.value) and "after 3 attempts" in str(info.value)
    assert TOKEN not in str(info.value) and len(waits) == 2
    assert (model / "model.safetensors").exists() and (model / "config.json").exists()


@pytest.mark.parametrize(("mode", "oig", "together", "unset", "message"), [
    ("hub", {}, False, None, "hub_repo"),
    ("hub", {"hub_repo": "not a repo"}, False, None, "ORG/NAME"),
    ("hub", {"hub_repo": "org/m"}, False, "HF_TOKEN", "HF_TOKEN is not set"),
    ("local", {}, True, None, "--publish hub"),
    ("s3", {}, False, None, "unknown publish mode"),
])
def test_publish_refuses_before_sending_anything(repo, monkeypatch, mode, oig, together, unset, message):
    if unset:
        monkeypatch.delenv(unset)
    with pytest.raises(PublishError, match=message):
        publish(repo / "runs" / "r1" / "model", mode=mode, run=make_run(), config=make_config(**oig), together=together)
    assert not (repo / "runs" / "r1" / "model" / "README.md").exists()


def test_a_folder_without_a_model_is_refused(repo):
    with pytest.raises(PublishError, match="no config.json"):
        publish(repo / "runs", mode="local", run=make_run(), config=make_config())


# --- the Hub, then Together -------------------------------------------------------------------------------------


def test_hub_then_together_deploys_the_uploaded_revision(repo, monkeypatch):
    model = repo / "runs" / "r1" / "model"
    with FakeHub(token=TOKEN) as hub_fake, FakeTogether(api_key=TG_KEY) as tg:
        monkeypatch.setenv("HF_ENDPOINT", hub_fake.url)
        monkeypatch.setenv("TOGETHER_BASE_URL", tg.url)
        section = publish(model, mode="hub", run=make_run("text2sql"), together=True, sleep=lambda s: None,
                          config=make_config(hub_repo="org/oig-chat", together_model_name="oig-sql"))
        sha = hub_fake.commits("org/oig-chat", "text2sql")[-1]["oid"]
        upload = tg.find("POST", "/v2/projects/proj_1/models/uploads")[0]["json"]
        created = tg.find("POST", "/v2/projects/proj_1/models")[0]["json"]
    assert section["revision"] == sha and section["branch"] == "text2sql"
    assert section["together"] == {"model": "oig-lab/oig-sql", "endpoint": "oig-lab/oig-sql",
                                   "endpoint_id": "endpoint_1", "base_url": tg.url}
    assert upload["remoteUrl"] == f"{hub_fake.url}/org/oig-chat/tree/{sha}" and upload["token"] == TOKEN
    assert created["baseModelId"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert TOKEN not in str(section) and TG_KEY not in str(section)


def test_a_failed_deployment_says_the_model_is_on_the_hub(repo, monkeypatch):
    model = repo / "runs" / "r1" / "model"
    with FakeHub(token=TOKEN) as hub_fake, FakeTogether(api_key=TG_KEY,
                                                          deploy_states=("DEPLOYMENT_STATE_FAILED",)) as tg:
        monkeypatch.setenv("HF_ENDPOINT", hub_fake.url)
        monkeypatch.setenv("TOGETHER_BASE_URL", tg.url)
        with pytest.raises(PublishError, match=r"is on the Hub \(org/m@.{12}, branch main\) but deploying it on "
                                               r"Together failed: .*DEPLOYMENT_STATE_FAILED"):
            publish(model, mode="hub", run=make_run(), config=make_config(hub_repo="org/m"), together=True,
                    sleep=lambda s: None)


def test_the_model_card_carries_eval_scores_as_model_index(repo, monkeypatch):
    monkeypatch.chdir(repo)
    run = make_run("main")
    run["evals"] = {"suites": {"smoke": {"score": 0.8571, "cases": 7}, "broken": {"score": None}},
                    "lm_eval": {"tasks": {"arc_easy": {"acc": 0.61, "acc_stderr": 0.02}}}}
    card = build_model_card(run, make_config(), hub_repo="org/oig-chat", branch="main")
    meta = yaml.safe_load(card.split("---")[1])
    [entry] = meta["model-index"]
    assert entry["name"] == "org/oig-chat"
    got = {(r["dataset"]["name"], m["type"], m["value"]) for r in entry["results"] for m in r["metrics"]}
    assert got == {("smoke", "accuracy", 0.8571), ("arc_easy", "acc", 0.61)}


def test_a_candidate_that_failed_the_gate_goes_to_its_own_hub_branch_only(repo, monkeypatch):
    model = repo / "runs" / "r1" / "model"
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        section = publish(model, mode="hub", run=make_run("main"), config=make_config(hub_repo="org/oig-chat"),
                          candidate=True)
        candidate = fake.files("org/oig-chat", "candidate-main")
        main_files = fake.files("org/oig-chat", "main")
    assert section["branch"] == "candidate-main" and "model.safetensors" in candidate
    assert main_files == {}  # never over the branch's model
    assert publish(model, mode="local", run=make_run(), config=make_config(), candidate=True) is None


# --- LoRA adapters (QLoRA's output) -------------------------------------------------------------------------


@pytest.fixture
def adapter_folder(repo) -> Path:
    """What `oig train` saves with `load_in_4bit`: the LoRA adapters unmerged, no config.json. QLoRA itself
    needs a GPU; the tiny model with LoRA adapters, saved the same way, gives the same folder."""
    from peft import get_peft_model

    from oig.train import tiny
    from oig.train.args import lora_config
    from oig.train.checkpoints import save_model

    model, tok = tiny.build_tiny(["Hello there", "Paris is the capital"], repo / "tinybase", seed=1)
    qlora = TrainingConfig(path=Path("training.yaml"), training={}, oig={"load_in_4bit": True, "lora_r": 4})
    peft_model = get_peft_model(model, lora_config(qlora))
    trainer = types.SimpleNamespace(model=peft_model, accelerator=types.SimpleNamespace(
        is_main_process=True, wait_for_everyone=lambda: None))
    target = repo / "runs" / "r2" / "model"
    save_model(trainer, tok, target, qlora)
    assert (target / "adapter_config.json").is_file() and not (target / "config.json").exists()
    return target


def test_adapters_are_published_as_adapters(adapter_folder, monkeypatch):
    section = publish(adapter_folder, mode="local", run=make_run(), config=make_config())
    assert section == {"local_path": "runs/r2/model"}
    meta, body = (adapter_folder / "README.md").read_text().split("\n---\n", 1)
    assert "library_name: peft" in meta and "base_model: Qwen/Qwen2.5-0.5B-Instruct" in meta and "- lora" in meta
    assert "LoRA adapters only" in body and "AutoPeftModelForCausalLM.from_pretrained" in body

    with FakeHub(token=TOKEN) as hub_fake, FakeTogether(api_key=TG_KEY) as tg:
        monkeypatch.setenv("HF_ENDPOINT", hub_fake.url)
        monkeypatch.setenv("TOGETHER_BASE_URL", tg.url)
        section = publish(adapter_folder, mode="hub", run=make_run(), together=True, sleep=lambda s: None,
                          config=make_config(hub_repo="org/oig-lora"))
        files = hub_fake.files("org/oig-lora")
        created = tg.find("POST", "/v2/projects/proj_1/models")[0]["json"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert "config.json" not in files and b"library_name: peft" in files["README.md"]
    assert created["type"] == "adapter" and created["baseModelId"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert section["together"]["model"].endswith("oig-lora")


def test_adapters_of_a_base_model_not_on_the_hub_are_not_uploaded(adapter_folder):
    run = {**make_run(), "base_model": "tiny"}
    with pytest.raises(PublishError, match="LoRA adapters, which need their base model"):
        publish(adapter_folder, mode="hub", run=run, config=make_config(hub_repo="org/m"))
