"""oig.together_client: the together SDK against a local Together (fake_together); what it sends, how it waits."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_together import FakeTogether

from oig import together_client as together_api
from oig.errors import TogetherError
from oig.publish import together as deploying
from oig.train import together as hosted

SHA = "c0ffee" + "0" * 34
BASE = "Qwen/Qwen2.5-0.5B-Instruct"


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for name in ("TOGETHER_PROJECT_ID", "TOGETHER_BASE_URL", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def client_for(fake: FakeTogether, key: str | None = None):
    return together_api.make_client(fake.url, key=key or fake.api_key, max_retries=0)


def deploy(fake: FakeTogether, clock: FakeClock | None = None, **kw):
    clock = clock or FakeClock()
    args = {"revision": SHA, "branch": "text2sql", "base_model": BASE, "client": client_for(fake),
            "sleep": clock.sleep, "clock": clock, "poll_s": 5.0, **kw}
    return deploying.deploy("org/oig-chat", **args)


# --- deploying a Hub model ----------------------------------------------------------------------------------


def test_deploy_registers_imports_and_deploys_the_hub_revision(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_private_repos")
    clock = FakeClock()
    with FakeTogether() as fake:
        result = deploy(fake, clock, hf_endpoint="https://huggingface.co")
        calls = [(r["method"], r["path"]) for r in fake.requests]
        model_req = fake.find("POST", "/v2/projects/proj_1/models")[0]["json"]
        upload_req = fake.find("POST", "/v2/projects/proj_1/models/uploads")[0]["json"]
        endpoint_req = fake.find("POST", "/v2/projects/proj_1/endpoints")[0]["json"]
        deploy_req = fake.find("POST", "/v2/projects/proj_1/endpoints/endpoint_1/deployments")[0]["json"]
        route_req = fake.find("PATCH", "/v2/projects/proj_1/endpoints/endpoint_1")[0]["json"]
    assert result == {"model": "oig-lab/oig-chat-text2sql", "endpoint": "oig-lab/oig-chat-text2sql",
                      "endpoint_id": "endpoint_1", "base_url": fake.url}
    assert calls[0] == ("GET", "/v3/whoami")  # the project comes from the key
    assert model_req == {"baseModelId": BASE, "name": "oig-chat-text2sql", "type": "model",
                         "description": f"org/oig-chat at {SHA} (oig)"}
    assert upload_req == {"modelId": "model_1", "remoteUrl": f"https://huggingface.co/org/oig-chat/tree/{SHA}",
                          "token": "hf_secret_for_private_repos"}
    assert endpoint_req == {"name": "oig-chat-text2sql"}
    assert deploy_req == {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}, "name": f"r-{SHA[:12]}",
                          "model": "projects/proj_1/models/model_1"}
    assert route_req == {"trafficSplit": [{"deploymentId": "deployment_1", "weight": 1}]}
    # It polled the import and the deployment until done, sleeping between polls.
    assert calls.count(("GET", "/v2/projects/proj_1/models/uploads/upload_1")) == 2
    assert calls.count(("GET", "/v2/projects/proj_1/endpoints/endpoint_1/deployments/deployment_1")) == 2
    assert clock.sleeps == [5.0, 5.0]


def test_main_branch_imports_the_repo_and_a_project_id_skips_whoami(monkeypatch):
    monkeypatch.setenv("TOGETHER_PROJECT_ID", "proj_1")
    with FakeTogether() as fake:
        deploy(fake, branch="main", hf_endpoint="http://127.0.0.1:1/")
        assert not fake.find("GET", "/v3/whoami")
        upload = fake.find("POST", "/v2/projects/proj_1/models/uploads")[0]["json"]
    assert upload == {"modelId": "model_1", "remoteUrl": "http://127.0.0.1:1/org/oig-chat"}  # no HF_TOKEN: no token


def test_a_second_publish_reuses_the_model_and_endpoint():
    with FakeTogether() as fake:
        first = deploy(fake)
        second = deploy(fake, revision="d" * 40)
        assert len(fake.models) == 1 and len(fake.endpoints) == 1 and len(fake.deployments) == 2
        uploads = fake.find("POST", "/v2/projects/proj_1/models/uploads")
        routes = fake.find("PATCH", "/v2/projects/proj_1/endpoints/endpoint_1")
    assert first["endpoint_id"] == second["endpoint_id"]
    assert [u["json"]["modelId"] for u in uploads] == ["model_1", "model_1"]
    assert routes[-1]["json"]["trafficSplit"] == [{"deploymentId": "deployment_2", "weight": 1}]


def test_a_deployment_that_never_comes_up_times_out():
    clock = FakeClock()
    with FakeTogether(deploy_states=("DEPLOYMENT_STATE_PROVISIONING",)) as fake, pytest.raises(
            TogetherError, match=r"did not finish within 60 s \(last state: DEPLOYMENT_STATE_PROVISIONING\)"):
        deploy(fake, clock, deploy_timeout_s=60)
    # 5 s waiting for the model import, then the deployment's full 60 s.
    assert clock.sleeps[0] == 5.0 and sum(clock.sleeps[1:]) == pytest.approx(60)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"upload_states": ("REMOTE_UPLOAD_STATUS_FAILED",)}, "could not import .*repository not found"),
    ({"deploy_states": ("DEPLOYMENT_STATE_FAILED",)}, "is DEPLOYMENT_STATE_FAILED"),
    ({"whoami_project": False}, "TOGETHER_PROJECT_ID"),
])
def test_failures_say_what_failed(kwargs, message):
    with FakeTogether(**kwargs) as fake, pytest.raises(TogetherError, match=message):
        deploy(fake)


def test_a_wrong_key_is_named_and_never_echoed():
    with FakeTogether() as fake, pytest.raises(TogetherError) as info:
        deploy(fake, client=client_for(fake, key="tg_wrong_key_123"))
    assert "TOGETHER_API_KEY" in str(info.value) and "tg_wrong_key_123" not in str(info.value)


def test_the_tiny_model_cannot_be_deployed():
    with pytest.raises(TogetherError, match="tiny"):
        deploying.deploy("org/m", revision=SHA, branch="main", base_model="tiny", client=object())


def test_client_settings(monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(TogetherError, match="TOGETHER_API_KEY is not set"):
        together_api.make_client()
    assert together_api.base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    monkeypatch.setenv("TOGETHER_BASE_URL", "http://localhost:1")
    assert together_api.base_url() == "http://localhost:1"
    assert together_api.slug("Org/OIG Chat__v2!") == "org-oig-chat-v2"


# --- hosted fine-tuning ------------------------------------------------------------------------------------


def mixture(tmp_path: Path, lines: list[str] | None = None) -> Path:
    d = tmp_path / "mixture"
    d.mkdir()
    records = [{"slice": "capitals", "messages": [{"role": "user", "content": "Capital of France?"},
                                                  {"role": "assistant", "content": "Paris."}]},
               {"slice": "greetings", "messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello!", "weight": 1}]}]
    text = "\n".join(lines) if lines is not None else "\n".join(json.dumps(r) for r in records)
    (d / "mixture.jsonl").write_text(text + "\n")
    return d


def config(**oig):
    training = {"num_train_epochs": 2, "learning_rate": 2e-5, "per_device_train_batch_size": 8, "max_length": 1024,
                "warmup_steps": 0.1, "lr_scheduler_type": "cosine", "seed": 42}
    return SimpleNamespace(training=training, base_model=BASE, seed=42, oig=oig)


def test_train_on_together_uploads_the_mixture_and_waits_for_the_job(tmp_path):
    clock = FakeClock()
    with FakeTogether() as fake:
        result = hosted.train_on_together(mixture(tmp_path), config(lora=True, lora_r=16), {"run_id": "r1"},
                                                client=client_for(fake), sleep=clock.sleep, clock=clock, poll_s=30)
        uploaded = fake.files["file-1"].decode()
        create = fake.find("POST", "/v1/fine-tunes")[0]["json"]
        polls = fake.find("GET", "/v1/fine-tunes/ft-1")
    lines = [json.loads(line) for line in uploaded.splitlines()]
    assert all(set(line) == {"messages"} for line in lines) and len(lines) == 2
    assert lines[1]["messages"][2] == {"role": "assistant", "content": "Hello!", "weight": 1}
    assert create["training_file"] == "file-1" and create["model"] == BASE
    assert create["n_epochs"] == 2 and create["learning_rate"] == 2e-5 and create["batch_size"] == 8
    assert create["max_seq_length"] == 1024 and create["warmup_ratio"] == 0.1 and create["random_seed"] == 42
    assert create["training_method"] == {"method": "sft", "train_on_inputs": False}
    assert create["training_type"]["type"] == "Lora" and create["training_type"]["lora_r"] == 16
    assert len(polls) == 3 and clock.sleeps == [30, 30]
    assert result["model"] == {"together": {"model": f"user/{BASE.split('/')[1]}-oig-ft-1", "base_url": fake.url}}
    assert result["job"]["id"] == "ft-1" and result["job"]["examples"] == 2 and result["job"]["training_file"] == "file-1"
    assert (tmp_path / "mixture" / "together_train.jsonl").read_text() == uploaded


def test_a_failed_job_reports_its_last_event(tmp_path):
    with FakeTogether(fine_tune_states=("running", "error")) as fake, pytest.raises(
            TogetherError, match="ended as error: out of memory at step 3"):
        hosted.train_on_together(mixture(tmp_path), config(), {}, client=client_for(fake),
                                       sleep=lambda s: None)


def test_a_job_that_runs_too_long_times_out(tmp_path):
    clock = FakeClock()
    with FakeTogether(fine_tune_states=("running",)) as fake, pytest.raises(TogetherError, match="did not finish"):
        hosted.train_on_together(mixture(tmp_path), config(), {}, client=client_for(fake), sleep=clock.sleep,
                                       clock=clock, timeout_s=100, poll_s=30)
    assert clock.now == pytest.approx(100)


@pytest.mark.parametrize(("lines", "message"), [
    (["not json"], r"mixture.jsonl:1: not a mixture record"),
    ([], "is empty"),
])
def test_bad_mixtures_are_refused_before_any_upload(tmp_path, lines, message):
    with pytest.raises(TogetherError, match=message):
        hosted.train_on_together(mixture(tmp_path, lines), config(), {}, client=object())
    assert not (tmp_path / "mixture" / "together_train.jsonl").exists()


def test_no_mixture_or_no_base_model(tmp_path):
    with pytest.raises(TogetherError, match="oig mix"):
        hosted.train_on_together(tmp_path, config(), {}, client=object())
    with pytest.raises(TogetherError, match="base_model"):
        hosted.train_on_together(mixture(tmp_path), SimpleNamespace(training={}, oig={}, base_model="tiny"),
                                       {}, client=object())


def test_fine_tune_arguments_mapping():
    args = hosted.fine_tune_arguments(
        SimpleNamespace(training={"num_train_epochs": 3, "per_device_train_batch_size": 4,
                                  "gradient_accumulation_steps": 4, "weight_decay": 0.01, "packing": True,
                                  "lr_scheduler_type": "linear", "logging_steps": 5}, seed=7,
                        oig={"lora": True, "lora_alpha": 32, "lora_target_modules": ["q_proj", "v_proj"]}), {})
    # Together's batch_size is the total batch: 4 per device x 4 accumulation steps (one process).
    assert args == {"training_method": "sft", "train_on_inputs": False, "n_epochs": 3, "batch_size": 16,
                    "gradient_accumulation_steps": 4, "weight_decay": 0.01, "lr_scheduler_type": "linear",
                    "packing": True, "random_seed": 7, "lora": True, "lora_alpha": 32,
                    "lora_trainable_modules": "q_proj,v_proj"}
    # A full fine-tune locally is a full fine-tune there too (Together's default would decide otherwise),
    # and TRL's default of no packing is sent (Together packs by default).
    full = hosted.fine_tune_arguments(SimpleNamespace(training={}, seed=1, oig={}), {})
    assert full["lora"] is False and full["packing"] is False
    dpo = hosted.fine_tune_arguments(SimpleNamespace(training={}, seed=1, oig={"method": "dpo", "dpo_beta": 0.2}), {},
                                     method="dpo")
    assert dpo["training_method"] == "dpo" and dpo["dpo_beta"] == 0.2 and "train_on_inputs" not in dpo


def test_settings_together_cannot_honour_are_refused_by_name(tmp_path):
    cfg = SimpleNamespace(training={"num_train_epochs": 2.6, "lr_scheduler_type": "constant", "max_steps": 10,
                                    "warmup_steps": 5},
                          seed=7, base_model=BASE, oig={"momentum": 0.9, "load_in_4bit": True})
    with pytest.raises(TogetherError) as err:
        hosted.train_on_together(mixture(tmp_path), cfg, {}, client=object())  # before any upload
    for name in ("momentum", "load_in_4bit", "max_steps", "num_train_epochs", "lr_scheduler_type",
                 "warmup_steps"):
        assert name in str(err.value)
    assert not (tmp_path / "mixture" / "together_train.jsonl").exists()
    owned = SimpleNamespace(training={"hub_model_id": "org/x"}, seed=7, base_model=BASE, oig={})
    with pytest.raises(TogetherError, match="hub_model_id: oig publishes the model itself"):
        hosted.fine_tune_arguments(owned, {})


def test_the_held_out_split_is_the_validation_file(tmp_path):
    d = mixture(tmp_path)
    (d / "eval.jsonl").write_text(json.dumps({"slice": "capitals", "messages": [
        {"role": "user", "content": "Capital of Spain?"}, {"role": "assistant", "content": "Madrid."}]}) + "\n")
    with FakeTogether() as fake:
        hosted.train_on_together(d, config(), {}, client=client_for(fake), sleep=lambda s: None)
        create = fake.find("POST", "/v1/fine-tunes")[0]["json"]
        assert create["training_file"] == "file-1" and create["validation_file"] == "file-2"
        assert create["n_evals"] == 2  # one per epoch
        assert json.loads(fake.files["file-2"])["messages"][1]["content"] == "Madrid."
    assert create["training_type"]["type"] == "Full"  # no lora: a full fine-tune, as locally


def test_dpo_runs_sft_then_dpo_from_its_result(tmp_path):
    d = mixture(tmp_path)
    pair = {"slice": "tone", "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "Go."}]}
    (d / "preferences.jsonl").write_text(json.dumps(pair) + "\n")
    cfg = config(method="dpo", dpo_beta=0.3)
    with FakeTogether() as fake:
        result = hosted.train_on_together(d, cfg, {}, client=client_for(fake), sleep=lambda s: None)
        sft, dpo = (c["json"] for c in fake.find("POST", "/v1/fine-tunes"))
        uploaded = json.loads(fake.files["file-2"])
    assert sft["training_method"]["method"] == "sft" and sft["model"] == BASE
    assert dpo["training_method"]["method"] == "dpo" and dpo["training_method"]["dpo_beta"] == 0.3
    assert dpo["from_checkpoint"] == "ft-1" and dpo["training_file"] == "file-2"
    assert uploaded == {"input": {"messages": pair["prompt"]}, "preferred_output": pair["chosen"],
                        "non_preferred_output": pair["rejected"]}
    assert result["job"]["id"] == "ft-2" and result["job"]["sft_job"]["id"] == "ft-1"
    assert result["model"]["together"]["model"] == result["job"]["output"]
