"""Together AI through the ``together`` SDK: deploying a Hub model, hosted fine-tuning, the client.

- ``deploy``: register the Hub revision as a custom model (``models.create`` and
  ``models.remote_uploads.create``), create (or reuse) a dedicated endpoint (``endpoints.create``),
  deploy the model on it (``endpoints.deployments.create``) and route its traffic there, waiting for
  each asynchronous step with a timeout.
- ``train_on_together``: the ``backend: together`` trainer. It uploads the mixture as chat JSONL
  (``files.upload``), starts a hosted fine-tuning job (``fine_tuning.create``), polls it and returns
  the resulting model for model.yaml.

The key is ``TOGETHER_API_KEY`` only. ``TOGETHER_BASE_URL`` overrides the API address (tests point it at
a local server); ``TOGETHER_PROJECT_ID`` names the project for the project-scoped (v2) calls, which
otherwise comes from ``whoami`` for a project API key. Sleep and clock are injectable so tests of the
waiting loops take no time.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oig.publish.publish import PublishError, secret_free

DEFAULT_BASE_URL = "https://api.together.ai"
TRAIN_FILE = "together_train.jsonl"
UPLOAD_TIMEOUT_S = 3600.0  # importing a multi-GB model from the Hub takes minutes
DEPLOY_TIMEOUT_S = 3600.0  # a dedicated GPU replica can take tens of minutes to come up
FINE_TUNE_TIMEOUT_S = 12 * 3600.0
POLL_S = 20.0

T = TypeVar("T")


class TogetherError(PublishError):
    """A Together call failed or a job did not finish (publishing or hosted training)."""


# --- the client -----------------------------------------------------------------------------------


def base_url(url: str | None = None) -> str:
    """The API root without ``/v1``: the SDK adds the version to every path itself."""
    url = (url or os.environ.get("TOGETHER_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def api_key() -> str:
    key = os.environ.get("TOGETHER_API_KEY", "").strip()
    if not key:
        raise TogetherError("TOGETHER_API_KEY is not set: Together needs an API key in the TOGETHER_API_KEY "
                            "environment variable (a repository secret in GitHub Actions)")
    return key


def make_client(url: str | None = None, *, key: str | None = None, max_retries: int = 2, timeout: float = 120.0):
    """A ``together.Together`` client for ``url`` (default: TOGETHER_BASE_URL or Together's API)."""
    from together import Together

    return Together(api_key=key or api_key(), base_url=base_url(url), max_retries=max_retries, timeout=timeout,
                    project_id=os.environ.get("TOGETHER_PROJECT_ID") or None)


def call(what: str, fn: Callable[[], T], service: str = "Together") -> T:
    """Run one SDK call; any failure becomes a TogetherError that says what failed and why."""
    try:
        return fn()
    except TogetherError:
        raise
    except Exception as exc:
        error = translate(what, exc, service)
        if error is None:
            raise
        raise error from None


def translate(what: str, exc: BaseException, service: str = "Together") -> TogetherError | None:
    """The TogetherError for an SDK failure, or None for a bug that should surface as one.

    ``service`` names who answered: Together, or the OpenAI-compatible server ``oig query`` asked.
    """
    import together

    if isinstance(exc, together.AuthenticationError):
        return TogetherError(f"{what}: {service} refused the API key (HTTP 401); check TOGETHER_API_KEY")
    if isinstance(exc, together.PermissionDeniedError):
        return TogetherError(f"{what}: the API key may not do this (HTTP 403); check the key's project and "
                             "permissions")
    if isinstance(exc, together.APIStatusError):
        detail = _first_line(exc.message)
        return TogetherError(secret_free(f"{what}: {service} answered HTTP {exc.status_code}: {detail}"))
    if isinstance(exc, together.APIConnectionError):
        return TogetherError(secret_free(f"{what}: could not reach {service} ({_first_line(str(exc))})"))
    if isinstance(exc, together.TogetherError | ValueError | TypeError | AttributeError | KeyError):
        # The SDK raises ValueError for missing arguments, and reading an answer that lacks the
        # expected fields raises AttributeError/KeyError/TypeError.
        return TogetherError(secret_free(f"{what}: {_first_line(str(exc)) or type(exc).__name__}"))
    return None


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def wait_for(what: str, poll: Callable[[], tuple[bool, str]], *, timeout_s: float, poll_s: float,
             sleep: Callable[[float], None], clock: Callable[[], float]) -> str:
    """Poll until ``poll`` says done (returns its last state) or the time is up (TogetherError).

    ``poll`` returns (done, state) and raises TogetherError itself for a failed job.
    """
    deadline = clock() + timeout_s
    while True:
        done, state = poll()
        if done:
            return state
        if clock() >= deadline:
            raise TogetherError(f"{what} did not finish within {timeout_s:g} s (last state: {state}); it may "
                                "still finish on Together: check it there and publish again")
        sleep(max(0.0, min(poll_s, deadline - clock())))


def slug(text: str, limit: int = 60) -> str:
    """A name Together accepts for models and endpoints: lowercase letters, digits and '-'."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "oig-model"


def project_id(client) -> str:
    """The project the v2 (models, endpoints) calls live under."""
    if client.project_id:
        return client.project_id
    who = call("finding the Together project (whoami)", client.whoami)
    project = getattr(who, "project", None)
    pid = getattr(project, "id", None)
    if not pid:
        raise TogetherError("this Together API key is not tied to a project: set TOGETHER_PROJECT_ID to the "
                            "project that should own the model and endpoint")
    client.project_id = pid
    return pid


def _same_name(qualified: str | None, name: str) -> bool:
    # Together answers with `<project_slug>/<name>`; requests may use the bare name.
    return bool(qualified) and (qualified == name or qualified.rsplit("/", 1)[-1] == name)


# --- deploying a Hub model on a dedicated endpoint -----------------------------------------------


def deploy(hub_repo: str, *, revision: str, branch: str, base_model: str | None, model_name: str | None = None,
           hf_endpoint: str = "https://huggingface.co", client=None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic, upload_timeout_s: float = UPLOAD_TIMEOUT_S,
           deploy_timeout_s: float = DEPLOY_TIMEOUT_S, poll_s: float = POLL_S) -> dict:
    """Register ``hub_repo@revision`` on Together and serve it on a dedicated endpoint.

    Returns the ``together`` part of model.yaml's model section: model, endpoint, endpoint_id, base_url.
    """
    if not base_model or base_model == "tiny" or Path(base_model).exists():
        raise TogetherError(f"Together needs the Hub id of the base model this one was fine-tuned from, not "
                            f"{base_model!r}; the built-in tiny model cannot be deployed there")
    client = client or make_client()
    name = slug(model_name or hub_repo.split("/")[-1] + ("" if branch == "main" else f"-{branch}"))
    pid = project_id(client)

    # --- the model: registered once per name, a new revision per upload --------------------------
    model = _create_or_find(
        f"registering model {name} on Together",
        lambda: client.models.create(project_id=pid, base_model_id=base_model, name=name, type="model",
                                     description=f"{hub_repo} at {revision} (oig)"),
        lambda: list(client.models.list(project_id=pid)), name)
    remote_url = f"{hf_endpoint.rstrip('/')}/{hub_repo}" + ("" if branch == "main" else f"/tree/{revision}")
    hf_token = os.environ.get("HF_TOKEN") or None  # private repos: Together reads them with this token
    upload = call(f"importing {remote_url} into Together model {name}",
                  lambda: client.models.remote_uploads.create(project_id=pid, model_id=model.id,
                                                              remote_url=remote_url,
                                                              **({"token": hf_token} if hf_token else {})))

    def upload_done() -> tuple[bool, str]:
        job = call("checking the model import", lambda: client.models.remote_uploads.retrieve(upload.id,
                                                                                               project_id=pid))
        if job.status == "REMOTE_UPLOAD_STATUS_SUCCEEDED":
            return True, job.status
        if job.status in ("REMOTE_UPLOAD_STATUS_FAILED", "REMOTE_UPLOAD_STATUS_ERROR"):
            raise TogetherError(f"Together could not import {remote_url}: {job.status_message or job.status}")
        return False, job.status

    wait_for(f"importing {remote_url} into Together", upload_done, timeout_s=upload_timeout_s, poll_s=poll_s,
             sleep=sleep, clock=clock)

    # --- the endpoint: one per model name; each publish adds a deployment and routes to it --------
    endpoint = _create_or_find(
        f"creating endpoint {name}", lambda: client.endpoints.create(project_id=pid, name=name),
        lambda: list(client.endpoints.list(project_id=pid)), name)
    deployment = call(
        f"deploying {name} on endpoint {endpoint.name}",
        lambda: client.endpoints.deployments.create(
            endpoint.id, project_id=pid, name=f"r-{revision[:12]}", model=f"projects/{pid}/models/{model.id}",
            autoscaling={"min_replicas": 1, "max_replicas": 1}))

    def deployment_ready() -> tuple[bool, str]:
        dep = call("checking the deployment", lambda: client.endpoints.deployments.retrieve(
            deployment.id, project_id=pid, endpoint_id=endpoint.id))
        state = dep.status.state
        if state == "DEPLOYMENT_STATE_READY":
            return True, state
        if state in ("DEPLOYMENT_STATE_FAILED", "DEPLOYMENT_STATE_STOPPED", "DEPLOYMENT_STATE_STOPPING"):
            raise TogetherError(f"the deployment on endpoint {endpoint.name} is {state}: {dep.status.message}")
        return False, state

    wait_for(f"deployment {deployment.name}", deployment_ready, timeout_s=deploy_timeout_s, poll_s=poll_s,
             sleep=sleep, clock=clock)
    # The new deployment takes all live traffic; earlier ones stay until someone removes them.
    call(f"routing endpoint {endpoint.name} to the new deployment",
         lambda: client.endpoints.update(endpoint.id, project_id=pid,
                                         traffic_split=[{"deployment_id": deployment.id, "weight": 1}]))
    return {"model": model.name, "endpoint": endpoint.name, "endpoint_id": endpoint.id,
            "base_url": str(client.base_url).rstrip("/").removesuffix("/v1")}


def _create_or_find(what: str, create: Callable, listing: Callable, name: str):
    import together

    try:
        return create()
    except together.ConflictError:
        pass  # it exists from an earlier publish: reuse it
    except Exception as exc:
        error = translate(what, exc)
        if error is None:
            raise
        raise error from None
    for item in call(f"{what} (looking up the existing one)", listing):
        if _same_name(getattr(item, "name", None), name):
            return item
    raise TogetherError(f"{what}: Together says it exists, but it is not in the project's list")


# --- hosted fine-tuning (backend: together) --------------------------------------------------------


def write_training_file(mixture_dir: Path) -> tuple[Path, int]:
    """mixture.jsonl as Together's chat format: one ``{"messages": [...]}`` per line (no ``slice`` key)."""
    source = Path(mixture_dir) / "mixture.jsonl"
    if not source.is_file():
        raise TogetherError(f"{source} does not exist: run `oig mix` (or `oig train`) to build the mixture first")
    target = Path(mixture_dir) / TRAIN_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{TRAIN_FILE}.", suffix=".tmp", dir=target.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, source.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    messages = record["messages"]
                except (ValueError, KeyError, TypeError):
                    raise TogetherError(f"{source}:{number}: not a mixture record (a JSON object with "
                                        "messages)") from None
                out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
                count += 1
        if not count:
            raise TogetherError(f"{source} is empty: the mixture has no examples to train on")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target, count


def fine_tune_arguments(config, run: dict) -> dict:
    """``fine_tuning.create`` arguments from training.yaml's resolved hyperparameters."""
    t = dict(getattr(config, "training", None) or {})
    o = dict(getattr(config, "oig", None) or {})
    args: dict = {"train_on_inputs": False}  # loss on assistant turns only, as the local trainer does
    if "num_train_epochs" in t:
        args["n_epochs"] = max(1, round(float(t["num_train_epochs"])))
    if "learning_rate" in t:
        args["learning_rate"] = float(t["learning_rate"])
    if "per_device_train_batch_size" in t:
        args["batch_size"] = int(t["per_device_train_batch_size"])
    if "gradient_accumulation_steps" in t:
        args["gradient_accumulation_steps"] = int(t["gradient_accumulation_steps"])
    if "max_length" in t and t["max_length"]:
        args["max_seq_length"] = int(t["max_length"])
    if isinstance(t.get("warmup_steps"), int | float) and 0 < t["warmup_steps"] < 1:
        args["warmup_ratio"] = float(t["warmup_steps"])  # transformers 5: below 1 is a ratio
    for ours, theirs in (("weight_decay", "weight_decay"), ("max_grad_norm", "max_grad_norm")):
        if isinstance(t.get(ours), int | float):
            args[theirs] = float(t[ours])
    if t.get("lr_scheduler_type") in ("linear", "cosine"):
        args["lr_scheduler_type"] = t["lr_scheduler_type"]
    seed = t.get("seed", getattr(config, "seed", None))
    if isinstance(seed, int):
        args["random_seed"] = seed
    if o.get("lora") is not None:
        args["lora"] = bool(o["lora"])
    if o.get("lora"):
        for key in ("lora_r", "lora_alpha", "lora_dropout"):
            if o.get(key) is not None:
                args[key] = o[key]
        modules = o.get("lora_target_modules")
        if modules:
            args["lora_trainable_modules"] = modules if isinstance(modules, str) else ",".join(modules)
    return args


def train_on_together(mixture_dir: Path, config, run: dict, *, client=None,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                      timeout_s: float = FINE_TUNE_TIMEOUT_S, poll_s: float = POLL_S) -> dict:
    """Fine-tune on Together's hosted service; returns {"model": model.yaml section, "job": details}."""
    base_model = getattr(config, "base_model", None) or run.get("base_model")
    if not base_model or base_model == "tiny":
        raise TogetherError("backend: together needs `base_model` in training.yaml set to a model Together "
                            "can fine-tune (the built-in tiny model exists only locally)")
    started = clock()

    # --- the training file ---------------------------------------------------------------------------
    path, count = write_training_file(Path(mixture_dir))
    client = client or make_client()
    uploaded = call(f"uploading {path.name} ({count:,} examples) to Together",
                    lambda: client.files.upload(path, purpose="fine-tune"))

    # --- the job ---------------------------------------------------------------------------------------
    args = fine_tune_arguments(config, run)
    job = call(f"starting fine-tuning of {base_model} on Together",
               lambda: client.fine_tuning.create(training_file=uploaded.id, model=base_model, suffix="oig", **args))
    job_id = job.id
    final: dict = {}

    def job_done() -> tuple[bool, str]:
        current = call(f"checking fine-tuning job {job_id}", lambda: client.fine_tuning.retrieve(job_id))
        status = str(getattr(current.status, "value", current.status))
        if status == "completed":
            final["job"] = current
            return True, status
        if status in ("error", "user_error", "cancelled"):
            raise TogetherError(f"fine-tuning job {job_id} ended as {status}: {_last_event(client, job_id)}")
        return False, status

    wait_for(f"fine-tuning job {job_id}", job_done, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep, clock=clock)
    output = getattr(final["job"], "x_model_output_name", None)
    if not output:
        raise TogetherError(f"fine-tuning job {job_id} completed but Together named no output model")
    return {
        "model": {"together": {"model": output, "base_url": str(client.base_url).rstrip("/").removesuffix("/v1")}},
        "job": {"id": job_id, "status": "completed", "training_file": uploaded.id, "examples": count,
                "base_model": base_model, "arguments": args, "duration_s": round(clock() - started, 1)},
    }


def _last_event(client, job_id: str) -> str:
    """The job's last event message: usually why it failed."""
    try:
        events = client.fine_tuning.list_events(job_id)
        data = list(getattr(events, "data", None) or [])
    except Exception:  # the reason is a courtesy; the failure itself is already known
        return "no reason given"
    messages = [getattr(e, "message", None) for e in data]
    messages = [m for m in messages if m]
    return secret_free(_first_line(messages[-1])) if messages else "no reason given"
