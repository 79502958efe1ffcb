"""How ``oig train`` starts on the GPUs: training.yaml's ``distributed`` as an ``accelerate launch`` command.

Each value names a file shipped in ``configs/accelerate/`` (never a path from training.yaml):

- ``ddp``: a copy of the model on each GPU (the default on several GPUs; one GPU runs one process);
- ``fsdp``: FSDP 2, full shard, each decoder layer wrapped: the layer class is the base model's own
  (``_no_split_modules`` of its transformers class, read from its config.json; no weights load), passed
  as ``--fsdp_transformer_layer_cls_to_wrap``;
- ``zero2`` / ``zero3``: DeepSpeed ZeRO-2 / ZeRO-3 (the gpu extra).

``distributed_offload`` (``optimizer`` or ``all``) adds the offload flags. The process count is the
GPUs of a machine times the machines; on several machines every machine runs the same command with its
own ``--machine-rank`` and the main machine's address. ``oig train --print-launch`` prints the command
(one argument a line) and the train workflow runs what it prints, so the workflow and the tests use this
code. ``check_launched`` refuses a run whose launch is not the one training.yaml asks for.
"""

from __future__ import annotations

import os
from pathlib import Path

from oig.train import tiny
from oig.train.errors import TrainError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "accelerate"
DEFAULT_PORT = 29500


def accelerate_file(mode: str) -> Path:
    """The shipped accelerate configuration of a ``distributed`` value."""
    from oig.data.schemas import DISTRIBUTED_MODES

    if mode not in DISTRIBUTED_MODES:
        raise TrainError(f"unknown distributed mode {mode!r}; expected one of {', '.join(DISTRIBUTED_MODES)}")
    return CONFIG_DIR / f"{mode}.yaml"


def resolve_mode(config, processes: int) -> str | None:
    """The mode a run with ``processes`` processes in all uses: training.yaml's ``distributed``, else ddp
    on several; None: one plain process (ddp on one GPU is one process)."""
    mode = config.oig.get("distributed") or ("ddp" if processes > 1 else None)
    return None if mode == "ddp" and processes <= 1 else mode


def launch_command(config, *, gpus: int, machines: int = 1, machine_rank: int = 0, main_ip: str | None = None,
                   main_port: int = DEFAULT_PORT, layer_classes: list[str] | None = None,
                   root: Path | None = None) -> list[str]:
    """The command that starts ``oig`` (its arguments follow) on ``gpus`` GPUs of each of ``machines``
    machines: ``python -m oig`` for one process, else ``accelerate launch --config_file ... -m oig``.
    ``layer_classes``: the decoder layer classes FSDP wraps (``decoder_layer_classes``); ``root``: paths
    are shown relative to it."""
    if gpus < 0 or machines < 1 or not 0 <= machine_rank < machines:
        raise TrainError(f"--gpus {gpus}, --num-machines {machines}, --machine-rank {machine_rank}: need "
                         "gpus >= 0, machines >= 1 and 0 <= machine rank < machines")
    if machines > 1 and not main_ip:
        raise TrainError("several machines need the main machine's address: --main-process-ip HOST")
    processes = max(gpus, 1) * machines
    mode = resolve_mode(config, processes)
    if mode is None:
        return ["python", "-m", "oig"]
    if gpus < 1:
        raise TrainError(f"distributed: {mode} needs GPUs, and none was found (nvidia-smi -L)")
    path = accelerate_file(mode)
    shown = os.path.relpath(path, root) if root is not None and path.is_relative_to(Path(root).resolve()) else path
    cmd = ["accelerate", "launch", "--config_file", str(shown), "--num_processes", str(processes),
           "--num_machines", str(machines)]
    if machines > 1:
        cmd += ["--machine_rank", str(machine_rank), "--main_process_ip", main_ip, "--main_process_port",
                str(main_port)]
    offload = config.oig.get("distributed_offload", "none")
    if mode == "fsdp":
        if not layer_classes:
            raise TrainError("distributed: fsdp wraps the model's decoder layers, and their class is unknown")
        cmd += ["--fsdp_transformer_layer_cls_to_wrap", ",".join(layer_classes)]
        if offload == "all":
            cmd += ["--fsdp_offload_params", "true"]
    elif offload != "none":  # zero2, zero3 (validation allows nothing else)
        cmd += ["--offload_optimizer_device", "cpu"]
        if offload == "all":
            cmd += ["--offload_param_device", "cpu"]
    return [*cmd, "-m", "oig"]


def decoder_layer_classes(base_model: str, revision: str | None = None) -> list[str]:
    """The class names of the base model's decoder layers, which FSDP wraps one by one: the
    ``_no_split_modules`` of the transformers class its config.json names. Reads config.json only (no
    weights, no model code: a model that needs its own is refused first)."""
    import transformers
    from transformers import PreTrainedConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from oig.train.base import refuse_model_code

    if base_model == tiny.NAME:
        model_type = "llama"
    else:
        refuse_model_code(base_model, revision)
        model_type = PreTrainedConfig.get_config_dict(base_model, revision=revision)[0].get("model_type")
    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    layers = list(getattr(getattr(transformers, class_name, None), "_no_split_modules", None) or []) if class_name else []
    if not layers:
        raise TrainError(f"the base model {base_model!r} ({model_type}) names no decoder layer class for FSDP to "
                         "wrap: use `distributed: zero3`, which needs none")
    return layers


def launched_mode(environ=None, processes: int = 1) -> tuple[str | None, str]:
    """(mode, offload) of this process's launch, from what ``accelerate launch`` put in its environment."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        mode = f"zero{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
        optimizer = env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") not in ("none", "")
        params = env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") not in ("none", "")
        return mode, "all" if params else "optimizer" if optimizer else "none"
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp", "all" if env.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true" else "none"
    return ("ddp" if processes > 1 else None), "none"


def describe(environ=None, processes: int = 1) -> str:
    """This run's launch in words, for training_log: ``none``, ``ddp``, ``zero3, offload all``..."""
    mode, offload = launched_mode(environ, processes)
    return (mode or "none") + (f", offload {offload}" if offload != "none" else "")


def check_launched(config, processes: int, environ=None) -> None:
    """Refuse a run launched otherwise than training.yaml's ``distributed`` says (a DeepSpeed file for an
    FSDP config, plain processes for ZeRO-3, the offload left out): it would train, but not as asked."""
    want = (resolve_mode(config, processes), config.oig.get("distributed_offload", "none"))
    got = launched_mode(environ, processes)
    if want != got:
        def shown(mode: str | None, offload: str) -> str:
            return (mode or "one plain process") + (f" with distributed_offload: {offload}" if offload != "none" else "")

        raise TrainError(f"training.yaml asks for {shown(*want)}, but this run was launched as {shown(*got)}: start it "
                         "with the command `oig train --print-launch` prints (then `train` and its arguments)")


def launch_for(opts, *, gpus: int | None = None, machines: int = 1, machine_rank: int = 0,
               main_ip: str | None = None, main_port: int = DEFAULT_PORT) -> list[str]:
    """``launch_command`` for ``oig train``'s options (``--print-launch``): training.yaml and the base model
    as that run would read them; ``gpus`` default: the GPUs torch sees here."""
    import importlib.util

    from oig.data.config import load_training_config
    from oig.train.base import check_base_model

    config = load_training_config(opts.config)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    mode = resolve_mode(config, max(gpus, 1) * machines)
    if mode in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        raise TrainError(f"distributed: {mode} needs DeepSpeed, from the gpu extra: pip install -c "
                         "requirements/lock.txt -e '.[gpu]'")
    layers = None
    if mode == "fsdp":
        base_model = opts.base_model or config.base_model
        if not base_model:
            raise TrainError("distributed: fsdp wraps the base model's decoder layers: set `base_model` in "
                             "training.yaml, or pass --base-model")
        check_base_model(base_model, config, opts)
        init = config.training.get("model_init_kwargs")
        layers = decoder_layer_classes(base_model, init.get("revision") if isinstance(init, dict) else None)
    return launch_command(config, gpus=gpus, machines=machines, machine_rank=machine_rank, main_ip=main_ip,
                          main_port=main_port, layer_classes=layers, root=Path(opts.root))
