"""Deploying a Hub model on Together AI: register the Hub revision as a custom model
(``models.create`` and ``models.remote_uploads.create``), create (or reuse) a dedicated endpoint
(``endpoints.create``), deploy the model on it (``endpoints.deployments.create``) and route its traffic
there, waiting for each asynchronous step with a timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from oig.errors import TogetherError
from oig.together_client import POLL_S, _same_name, call, make_client, project_id, slug, translate, wait_for

UPLOAD_TIMEOUT_S = 3600.0  # importing a multi-GB model from the Hub takes minutes
DEPLOY_TIMEOUT_S = 3600.0  # a dedicated GPU replica can take tens of minutes to come up


def deploy(hub_repo: str, *, revision: str, branch: str, base_model: str | None, model_name: str | None = None,
           hf_endpoint: str = "https://huggingface.co", client=None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic, upload_timeout_s: float = UPLOAD_TIMEOUT_S,
           deploy_timeout_s: float = DEPLOY_TIMEOUT_S, poll_s: float = POLL_S, adapter: bool = False) -> dict:
    """Register ``hub_repo@revision`` on Together and serve it on a dedicated endpoint.

    ``adapter``: the repo holds LoRA adapters for ``base_model`` (QLoRA), registered as ``type="adapter"``.

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
        lambda: client.models.create(project_id=pid, base_model_id=base_model, name=name,
                                     type="adapter" if adapter else "model",
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
