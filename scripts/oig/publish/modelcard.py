"""The model card (README.md) and loss curve written beside a published model.

Built from the repository's state: the base model, the mixture table with each slice's license,
hyperparameters, metrics, the loss curve, a usage snippet and the commit the model was trained from.
The metadata block is ``huggingface_hub.ModelCardData``, so the Hub indexes base model, datasets,
license and tags.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from oig.errors import OigError, PublishError
from oig.files import WriteError, atomic_output, write_atomic

CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: a folder of LoRA adapters for a base model
LOSS_CURVE_FILE = "loss_curve.png"
TAGS = ["oig", "trl", "sft", "text-generation"]  # an SFT run; a DPO run says `dpo` instead (``tags``)
_HF_DATASET = re.compile(r"^(?:https?://(?:www\.)?huggingface\.co/datasets/)?([\w.-]+/[\w.-]+?)/?$")


def write_model_card(model_dir: Path, run: dict, config, *, hub_repo: str | None = None, branch: str | None = None,
                     data_dir: Path = Path("data")) -> Path:
    """Write README.md (and loss_curve.png when there are losses) into ``model_dir``.

    A file that cannot be written (full disk, read-only folder) is a PublishError naming it."""
    model_dir = Path(model_dir)
    target = model_dir / CARD_FILE
    try:
        has_curve = write_loss_curve(run.get("metrics") or [], model_dir / LOSS_CURVE_FILE)
        text = build_model_card(run, config, hub_repo=hub_repo, branch=branch, data_dir=data_dir,
                                loss_curve=LOSS_CURVE_FILE if has_curve else None, local_path=model_dir)
        write_atomic(target, text)
    except WriteError as exc:
        raise PublishError(str(exc)) from None
    return target


# --- the loss curve --------------------------------------------------------------------------------


def _points(metrics: list, key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for i, row in enumerate(metrics):
        if isinstance(row, dict) and isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool):
            step = row.get("step")
            steps.append(float(step) if isinstance(step, int | float) else float(i))
            values.append(float(row[key]))
    return steps, values


def write_loss_curve(metrics: list, target: Path) -> bool:
    """Plot training (and eval) loss over steps as a PNG; False when there is no loss to plot."""
    steps, losses = _points(metrics, "loss")
    eval_steps, eval_losses = _points(metrics, "eval_loss")
    if not losses and not eval_losses:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on a runner
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        if losses:
            ax.plot(steps, losses, label="train loss", linewidth=1.5)
        if eval_losses:
            ax.plot(eval_steps, eval_losses, label="eval loss", marker="o", linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_output(target, "wb", suffix=".png") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return True


# --- slice licenses -----------------------------------------------------------------------------------


def slice_info(data_dir: Path) -> dict[str, dict]:
    """name -> {"license", "datasets"} for the slices in ``data_dir``; missing ones are simply absent.

    ``load_slices`` refuses the whole folder if any slice is invalid; the card still wants the
    licenses of the valid ones, so each file is then read on its own.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return {}
    try:
        from oig.data.validate import load_slices

        slices = load_slices(data_dir)
    except (OigError, ImportError):
        return _slice_info_per_file(data_dir)
    return {s.name: {"license": s.license, "datasets": [e.link for e in s.huggingface]} for s in slices}


def _slice_info_per_file(data_dir: Path) -> dict[str, dict]:
    from oig import yamlsafe

    info = {}
    for path in sorted(data_dir.glob("*.yaml")):
        try:
            doc = yamlsafe.load(path.read_bytes())
        except (OSError, yamlsafe.YamlError):
            continue
        if isinstance(doc, dict):
            links = [e.get("link") for e in doc.get("HuggingFace") or [] if isinstance(e, dict)]
            license_ = doc.get("license")
            info[path.stem] = {"license": license_ if isinstance(license_, str) else None,
                               "datasets": [link for link in links if isinstance(link, str)]}
    return info


def _dataset_id(link: str) -> str | None:
    m = _HF_DATASET.match(link.strip())
    return m.group(1) if m else None


# --- the card ---------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """Text safe inside a Markdown table cell: contributor-written values cannot break the table."""
    text = "" if value is None else str(value)
    text = text.replace("\r", " ").replace("\n", " ").replace("|", "\\|").replace("`", "'")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _number(value: object, fmt: str = "{:g}") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else _cell(value)
    return fmt.format(value)


def _mixture_table(mixture: dict, info: dict[str, dict]) -> list[str]:
    rows = [s for s in mixture.get("slices") or [] if isinstance(s, dict)]
    if not rows:
        return ["No mixture was recorded for this run."]
    lines = ["| slice | license | weight | share | examples | epochs | sha256 | pins |",
             "|:---|:---|---:|---:|---:|---:|:---|:---|"]
    for s in rows:
        name = str(s.get("name", "?"))
        license_ = (info.get(name) or {}).get("license") or "unknown"
        share = s.get("share")
        pins = s.get("pins") or []
        pins_text = ", ".join(str(p) for p in pins) if isinstance(pins, list) else str(pins)
        sha = str(s.get("sha256") or "")[:12]
        lines.append(f"| {_cell(name)} | {_cell(license_)} | {_number(s.get('weight'))} | "
                     f"{_number(share, '{:.1%}')} | {_number(s.get('count'), '{:,}')} | "
                     f"{_number(s.get('epochs'), '{:.2f}')} | {_cell(sha)} | {_cell(pins_text)} |")
    total = mixture.get("total")
    if total is not None:
        lines.append(f"| **total** | | | | **{_number(total, '{:,}')}** | | | |")
    return lines


def _hyperparameter_table(hp: dict) -> list[str]:
    if not hp:
        return ["No hyperparameters were recorded."]
    lines = ["| hyperparameter | value |", "|:---|:---|"]
    for key in sorted(hp):
        value = hp[key]
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        lines.append(f"| {_cell(key)} | {_cell(text)} |")
    return lines


def _metrics_lines(run: dict) -> list[str]:
    metrics = [m for m in run.get("metrics") or [] if isinstance(m, dict)]
    train = [m for m in metrics if isinstance(m.get("loss"), int | float)]
    evals = [m for m in metrics if isinstance(m.get("eval_loss"), int | float)]
    lines = ["| metric | value |", "|:---|:---|"]
    if train:
        lines.append(f"| final train loss (step {_number(train[-1].get('step'))}) | {train[-1]['loss']:.4f} |")
        lines.append(f"| lowest train loss | {min(m['loss'] for m in train):.4f} |")
    if evals:
        lines.append(f"| final eval loss (step {_number(evals[-1].get('step'))}) | {evals[-1]['eval_loss']:.4f} |")
    if run.get("tokens_per_second") is not None:
        lines.append(f"| tokens per second | {_number(run.get('tokens_per_second'), '{:,.0f}')} |")
    if run.get("duration_s") is not None:
        lines.append(f"| training time | {_number(run.get('duration_s'), '{:,.1f}')} s |")
    return lines if len(lines) > 2 else ["No metrics were recorded."]


def _repository_link() -> str:
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    return f"[{_cell(repo)}]({server}/{repo})" if server and repo else "its repository"


def _commit_line(commit: str | None) -> str:
    if not commit:
        return "The repository commit was not recorded."
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    if server and repo:
        return f"Trained from commit [`{commit[:12]}`]({server}/{repo}/commit/{commit})."
    return f"Trained from commit `{commit}`."


def is_adapter(model_dir: Path | None) -> bool:
    """Whether the folder holds LoRA adapters alone (QLoRA's output: ``adapter_config.json``, no
    ``config.json``) rather than a whole model."""
    return model_dir is not None and (Path(model_dir) / ADAPTER_CONFIG).is_file() and not (
        Path(model_dir) / "config.json").is_file()


def _usage(model_ref: str, revision: str | None, adapter: bool = False) -> list[str]:
    rev = f', revision="{revision}"' if revision else ""
    # peft's AutoPeftModelForCausalLM loads the base model named in adapter_config.json, then the adapters.
    load = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}"{rev})',
            f'model = AutoPeftModelForCausalLM.from_pretrained("{model_ref}"{rev})'] if adapter else [
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}"{rev})',
        f'model = AutoModelForCausalLM.from_pretrained("{model_ref}"{rev})']
    return [
        "```python",
        *load,
        'messages = [{"role": "user", "content": "Hello!"}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\","
        " return_dict=True)",
        "output = model.generate(**inputs, max_new_tokens=128, do_sample=False)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "From a checkout of the repository that trained it (model.yaml names this model):",
        "",
        "```bash",
        'oig query "Hello!"',
        "oig serve   # an OpenAI-compatible server on http://127.0.0.1:8000/v1",
        "```",
    ]


def eval_results(run: dict) -> list:
    """The run's eval suite scores (and lm-eval metrics) as model-index entries (huggingface_hub.EvalResult)."""
    from huggingface_hub import EvalResult

    evals = run.get("evals") if isinstance(run.get("evals"), dict) else {}
    out = []
    for name, entry in sorted((evals.get("suites") or {}).items()):
        if isinstance(entry, dict) and isinstance(entry.get("score"), int | float):
            out.append(EvalResult(task_type="text-generation", dataset_type="oig-eval-suite", dataset_name=str(name),
                                  metric_type="accuracy", metric_name=f"{name} pass rate",
                                  metric_value=round(float(entry["score"]), 4)))
    lm = evals.get("lm_eval") if isinstance(evals.get("lm_eval"), dict) else {}
    for task, metrics in sorted((lm.get("tasks") or {}).items()):
        for metric, value in sorted((metrics or {}).items()):
            if isinstance(value, int | float) and not metric.endswith("_stderr"):
                out.append(EvalResult(task_type="text-generation", dataset_type=str(task), dataset_name=str(task),
                                      metric_type=str(metric), metric_value=round(float(value), 4)))
    return out


def tags(run: dict) -> list[str]:
    """The card's tags: the training method as run (``method: dpo`` is DPO, after SFT when there was data)."""
    method = run.get("method") or "sft"
    return [method if t == "sft" else t for t in TAGS]


def build_model_card(run: dict, config, *, hub_repo: str | None = None, branch: str | None = None,
                     data_dir: Path = Path("data"), loss_curve: str | None = LOSS_CURVE_FILE,
                     local_path: Path | None = None) -> str:
    """The model card's full text: YAML metadata, then the Markdown body."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = run.get("base_model") or getattr(config, "base_model", None)
    mixture = run.get("mixture") or {}
    info = slice_info(data_dir)
    names = [str(s.get("name")) for s in mixture.get("slices") or [] if isinstance(s, dict)]
    datasets = sorted({d for n in names for link in (info.get(n) or {}).get("datasets", [])
                       if (d := _dataset_id(link))})
    licenses = sorted({(info.get(n) or {}).get("license") or "unknown" for n in names})
    # Only a Hub id is a valid base_model in the metadata; `tiny` and local paths are not.
    hub_base = base_model if isinstance(base_model, str) and _dataset_id(base_model) and not Path(
        base_model).exists() else None
    adapter = is_adapter(local_path)
    data = ModelCardData(
        base_model=hub_base,
        datasets=datasets or None,
        # The weights inherit the base model's license; the data licenses are listed per slice below.
        license="other",
        license_name="see-model-card",
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags(run) + (["lora"] if adapter else []) + ([f"branch-{branch}"] if branch and branch != "main" else []),
    )
    title = hub_repo or (local_path.name if local_path else "oig model")
    results = eval_results(run)
    if results:  # the Hub shows model-index as the model's evaluation results
        data.model_name = title
        data.eval_results = results
    model_ref = hub_repo or (str(local_path) if local_path else "PATH")
    body = [
        f"# {_cell(title)}",
        "",
        f"A chat model fine-tuned with oig from the community data slices of {_repository_link()}: each "
        "slice is a YAML file in the repository's `data/` folder, and `training.yaml` sets the mixture and "
        "hyperparameters.",
        "",
        f"- **Base model:** `{_cell(base_model or 'unknown')}`",
        *([f"- **Adapter:** LoRA adapters only (QLoRA); load them on `{_cell(base_model or 'unknown')}` with peft"]
          if adapter else []),
        f"- **Run:** `{_cell(run.get('run_id') or 'unknown')}`" + (f" on branch `{_cell(branch)}`" if branch else ""),
        f"- **Data licenses:** {_cell(', '.join(licenses)) if licenses else 'none recorded'} "
        "(per slice in the table below); the weights also carry the base model's license.",
        "",
        "## Training data: the mixture",
        "",
        *_mixture_table(mixture, info),
        "",
        "## Hyperparameters",
        "",
        *_hyperparameter_table(run.get("hyperparameters") or {}),
        "",
        "## Metrics",
        "",
        *_metrics_lines(run),
        "",
    ]
    if loss_curve:
        body += [f"![Training and eval loss over steps]({loss_curve})", ""]
    revision = branch if hub_repo and branch and branch != "main" else None
    body += ["## Usage", "", *_usage(model_ref, revision, adapter), "", "## Provenance", "",
             _commit_line(run.get("git_commit")), ""]
    card = ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body))
    return str(card)
