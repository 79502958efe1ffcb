"""Publishing a trained model: a local folder, the Hugging Face Hub, and optionally a Together endpoint.

``publish`` returns the ``model`` section of model.yaml, or raises :class:`PublishError`. The trainer
writes model.yaml only from a returned section, so a failed upload leaves model.yaml untouched and
the trained model where it was saved.

- ``none``: nothing is published (returns None).
- ``local``: the model card is written beside the weights; model.yaml records the folder.
- A folder of LoRA adapters alone (QLoRA's ``load_in_4bit`` output: ``adapter_config.json``, no
  ``config.json``) is published as adapters: the card says ``library_name: peft`` and names the base
  model, the Hub gets the adapter files, Together registers them with ``type="adapter"``.
- ``hub``: the folder (with its model card and loss curve) goes to the Hub repo named by ``hub_repo``
  in training.yaml, on a branch named after the git branch, so a specialisation branch never
  overwrites main's model. The commit sha is recorded as the revision.
- ``together=True`` (with ``hub``): the Hub revision is registered on Together and deployed on a
  dedicated endpoint (``oig.publish.together.deploy``).

Credentials come only from HF_TOKEN and TOGETHER_API_KEY and never appear in messages or files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from oig.errors import OigError, PublishError

MODES = ("none", "local", "hub")


def publish(model_dir: Path, *, mode: str, run: dict, config, together: bool = False,
            data_dir: Path = Path("data"), retries: int = 4, sleep: Callable[[float], None] = time.sleep,
            candidate: bool = False) -> dict | None:
    """Publish ``model_dir`` and return the ``model`` section for model.yaml (None for mode none).

    ``candidate``: the model failed the release gate; only a Hub run publishes it, to the branch
    ``candidate-<branch>``, never over the branch's model (local and none publish nothing: None).

    ``run`` is the training_log dict, ``config`` the TrainingConfig. ``retries`` and ``sleep`` govern
    the backoff between failed Hub uploads (tests pass a sleep that returns at once).
    """
    if mode not in MODES:
        raise PublishError(f"unknown publish mode {mode!r}; expected one of {', '.join(MODES)}")
    if together and mode != "hub":
        raise PublishError("Together deploys models from the Hugging Face Hub: use --publish hub with --together")
    if mode == "none" or (candidate and mode != "hub"):
        return None
    model_dir = Path(model_dir)
    from oig.publish import hub, modelcard

    adapter = modelcard.is_adapter(model_dir)  # QLoRA: LoRA adapters for the base model, published as such
    if not (model_dir / "config.json").is_file() and not adapter:
        raise PublishError(f"{model_dir} holds no trained model (no config.json, no {modelcard.ADAPTER_CONFIG}); "
                           "nothing to publish")
    oig_keys = getattr(config, "oig", None) or {}
    base_model = run.get("base_model") or getattr(config, "base_model", None)
    if adapter and mode == "hub" and (not base_model or base_model == "tiny" or Path(str(base_model)).exists()):
        raise PublishError(f"{model_dir} holds LoRA adapters, which need their base model to load; the base "
                           f"model {base_model!r} is not on the Hub, so the adapters would be unusable there")

    # --- where it goes: checked before anything is written or sent ------------------------------
    repo_id = branch = token = None
    if mode == "hub":
        repo_id = oig_keys.get("hub_repo")
        if not repo_id:
            raise PublishError("publishing to the Hub needs `hub_repo: ORG/NAME` under Training in training.yaml")
        hub.check_repo_id(repo_id)
        token = hub.token()
        branch = hub.branch_name(run.get("git_branch"))
        if candidate:
            branch = hub.sanitize_branch(f"candidate-{branch}")

    # --- the model card and loss curve, beside the weights ------------------------------------------
    modelcard.write_model_card(model_dir, run, config, hub_repo=repo_id, branch=branch, data_dir=data_dir)

    if mode == "local":
        return {"local_path": _display_path(model_dir)}

    # --- the Hub: create the repo and branch, upload, record the commit ---------------------------
    endpoint = hub.endpoint()
    revision = hub.upload_model(model_dir, repo_id, branch=branch, token=token, endpoint=endpoint,
                                commit_message=_commit_message(run), retries=retries, sleep=sleep)
    section: dict = {"hub_repo": repo_id, "revision": revision, "branch": branch, "endpoint": endpoint}

    # --- Together: register the Hub revision and deploy it on a dedicated endpoint ----------------
    if together:
        from oig.publish import together

        try:
            section["together"] = together.deploy(
                repo_id, revision=revision, branch=branch, base_model=run.get("base_model"),
                model_name=oig_keys.get("together_model_name"), hf_endpoint=endpoint, sleep=sleep, adapter=adapter)
        except OigError as exc:
            raise PublishError(f"the model is on the Hub ({repo_id}@{revision[:12]}, branch {branch}) but "
                               f"deploying it on Together failed: {exc}") from None
    return section


def _display_path(path: Path) -> str:
    """The folder relative to the current directory (the repository root) when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _commit_message(run: dict) -> str:
    commit = str(run.get("git_commit") or "")[:12]
    run_id = run.get("run_id") or "unknown run"
    return f"oig: {run_id}" + (f" from {commit}" if commit else "")
