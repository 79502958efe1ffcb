"""training.yaml's `distributed` as an `accelerate launch` command (oig.train.launch, `oig train --print-launch`).

Nothing here runs DDP, FSDP or DeepSpeed: this machine has no GPU. What is checked instead is everything
up to the processes: each shipped file loads with accelerate's own config loader, and each command oig
builds goes through accelerate's own launch parser, its validation (which merges the file in) and the
function that prepares the processes' environment, whose variables are what transformers and accelerate
read in each process (FSDP's layer class, the ZeRO stage, the offload devices). That environment is then
what `check_launched` accepts for the same training.yaml and refuses for another.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from oig.cli import main
from oig.data.config import TrainingConfig
from oig.train import launch
from oig.train.errors import TrainError

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ddp", "fsdp", "zero2", "zero3")


def config(**oig) -> TrainingConfig:
    return TrainingConfig(path=Path("training.yaml"), oig=oig)


def accelerate_env(cmd: list[str]) -> tuple[object, dict[str, str]]:
    """What `accelerate launch` makes of ``cmd``: its parsed arguments, file merged, and the environment
    it gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    assert cmd[:2] == ["accelerate", "launch"] and cmd[-2:] == ["-m", "oig"]
    cmd = [str(ROOT / c) if c.startswith("configs/") else c for c in cmd]  # shown relative to the repository
    args = launch_command_parser().parse_args([*cmd[2:], "train", "--publish", "none"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


@pytest.mark.parametrize("mode", MODES)
def test_each_shipped_file_loads_with_accelerates_own_loader(mode):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "configs" / "accelerate" / f"{mode}.yaml"
    assert path.read_text().startswith(f"# `distributed: {mode}` in training.yaml")
    loaded = load_config_from_file(str(path))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[mode]
    assert loaded.distributed_type.value == expected
    assert launch.accelerate_file(mode) == path
    if mode == "fsdp":
        fsdp = loaded.fsdp_config
        assert (fsdp["fsdp_version"], fsdp["fsdp_reshard_after_forward"], fsdp["fsdp_auto_wrap_policy"],
                fsdp["fsdp_state_dict_type"]) == (2, True, "TRANSFORMER_BASED_WRAP", "FULL_STATE_DICT")
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's own, on the command line
    if mode.startswith("zero"):
        ds = loaded.deepspeed_config
        assert ds["zero_stage"] == int(mode[-1])
        assert (ds["zero3_init_flag"], ds["zero3_save_16bit_model"]) == ((True, True) if mode == "zero3" else
                                                                         (False, False))
        assert "gradient_accumulation_steps" not in ds  # "auto": the trainer fills it from training.yaml


def test_one_gpu_runs_one_plain_process_and_several_default_to_ddp():
    assert launch.launch_command(config(), gpus=1) == ["python", "-m", "oig"]
    assert launch.launch_command(config(), gpus=0) == ["python", "-m", "oig"]
    assert launch.launch_command(config(distributed="ddp"), gpus=1) == ["python", "-m", "oig"]
    cmd = launch.launch_command(config(), gpus=4, root=ROOT)
    assert cmd == ["accelerate", "launch", "--config_file", "configs/accelerate/ddp.yaml", "--num_processes", "4",
                   "--num_machines", "1", "-m", "oig"]
    args, env = accelerate_env(cmd)
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed, args.num_processes) == (True, False, False, 4)
    assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env
    launch.check_launched(config(), 4, env)


def test_fsdp_wraps_the_models_decoder_layer_and_offloads_everything_with_all():
    cmd = launch.launch_command(config(distributed="fsdp", distributed_offload="all"), gpus=8,
                                layer_classes=["Qwen2DecoderLayer"], root=ROOT)
    assert cmd[:4] == ["accelerate", "launch", "--config_file", "configs/accelerate/fsdp.yaml"]
    args, env = accelerate_env(cmd)
    assert (args.use_fsdp, args.num_processes) == (True, 8)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Qwen2DecoderLayer"
    assert (env["FSDP_RESHARD_AFTER_FORWARD"], env["FSDP_OFFLOAD_PARAMS"]) == ("true", "true")
    assert (env["FSDP_STATE_DICT_TYPE"], env["FSDP_CPU_RAM_EFFICIENT_LOADING"]) == ("FULL_STATE_DICT", "true")
    launch.check_launched(config(distributed="fsdp", distributed_offload="all"), 8, env)
    with pytest.raises(TrainError, match="asks for fsdp, but this run was launched as fsdp with distributed_offload"):
        launch.check_launched(config(distributed="fsdp"), 8, env)
    _, plain = accelerate_env(launch.launch_command(config(distributed="fsdp"), gpus=2, layer_classes=["L"]))
    assert plain["FSDP_OFFLOAD_PARAMS"] == "false"
    with pytest.raises(TrainError, match="class is unknown"):
        launch.launch_command(config(distributed="fsdp"), gpus=2)


@pytest.mark.parametrize(("mode", "offload", "optimizer", "params"), [
    ("zero2", "none", "none", "none"),
    ("zero2", "optimizer", "cpu", "none"),
    ("zero3", "none", "none", "none"),
    ("zero3", "optimizer", "cpu", "none"),
    ("zero3", "all", "cpu", "cpu"),
])
def test_deepspeed_stages_and_their_offload(mode, offload, optimizer, params):
    cfg = config(distributed=mode, distributed_offload=offload)
    cmd = launch.launch_command(cfg, gpus=4, root=ROOT)
    assert cmd[3] == f"configs/accelerate/{mode}.yaml"
    args, env = accelerate_env(cmd)
    assert (args.use_deepspeed, args.num_processes) == (True, 4)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == mode[-1]
    assert (env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"],
            env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"]) == (optimizer, params)
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == ("true" if mode == "zero3" else "false")
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env  # auto: training.yaml's, through the trainer
    launch.check_launched(cfg, 4, env)
    assert launch.describe(env, 4) == mode + (f", offload {offload}" if offload != "none" else "")
    other = "zero2" if mode == "zero3" else "zero3"
    with pytest.raises(TrainError, match=f"asks for {other}.*launched as {mode}"):
        launch.check_launched(config(distributed=other, distributed_offload=offload), 4, env)


def test_an_explicit_mode_runs_under_accelerate_on_one_gpu_too():
    cmd = launch.launch_command(config(distributed="zero3", distributed_offload="all"), gpus=1)
    args, env = accelerate_env(cmd)
    assert args.num_processes == 1 and env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == "cpu"


def test_several_machines_run_the_same_command_with_their_rank():
    cfg = config(distributed="zero3")
    cmds = [launch.launch_command(cfg, gpus=8, machines=2, machine_rank=rank, main_ip="10.0.0.1", root=ROOT)
            for rank in (0, 1)]
    assert cmds[0][cmds[0].index("--num_processes") + 1] == "16"
    assert [c[c.index("--machine_rank") + 1] for c in cmds] == ["0", "1"]
    assert [c for c in cmds[0] if c != "0"] == [c for c in cmds[1] if c != "1"]
    args, env = accelerate_env(cmds[1])
    assert (args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port) == \
        (2, 1, "10.0.0.1", 29500)
    assert args.deepspeed_multinode_launcher == "standard"  # torchrun on each machine, no hostfile
    args, env = accelerate_env(launch.launch_command(config(), gpus=4, machines=2, machine_rank=1, main_ip="h"))
    assert (args.multi_gpu, args.num_processes, args.nnodes, args.node_rank) == (True, 8, "2", 1)
    with pytest.raises(TrainError, match="--main-process-ip"):
        launch.launch_command(cfg, gpus=8, machines=2)
    with pytest.raises(TrainError, match="machine rank"):
        launch.launch_command(cfg, gpus=8, machines=2, machine_rank=2, main_ip="h")


def test_a_run_launched_otherwise_than_training_yaml_says_stops():
    launch.check_launched(config(), 1, {})
    with pytest.raises(TrainError, match="asks for zero3, but this run was launched as one plain process"):
        launch.check_launched(config(distributed="zero3"), 1, {})
    with pytest.raises(TrainError, match="asks for ddp, but this run was launched as fsdp"):
        launch.check_launched(config(), 2, {"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(TrainError, match="print-launch"):
        launch.check_launched(config(distributed="fsdp"), 4, {})


def test_the_decoder_layer_class_comes_from_the_models_config(tmp_path):
    assert launch.decoder_layer_classes("tiny") == ["LlamaDecoderLayer"]
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}')
    assert launch.decoder_layer_classes(str(folder)) == ["Qwen2DecoderLayer"]
    (folder / "config.json").write_text('{"model_type": "qwen2", "auto_map": {"AutoModel": "x.Y"}}')
    with pytest.raises(TrainError, match="needs its own Python code"):
        launch.decoder_layer_classes(str(folder))


def write_training(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "training.yaml"
    path.write_text(text)
    return path


def test_print_launch_prints_the_command_one_argument_a_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    training = write_training(tmp_path, "Training:\n  base_model: tiny\n  distributed: fsdp\n")
    assert main(["train", "--config", str(training), "--print-launch", "--gpus", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["accelerate", "launch", "--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "2",
                     "--num_machines", "1", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "-m", "oig"]
    assert main(["train", "--config", str(write_training(tmp_path, "Training:\n  lr: 0.0001\n")), "--print-launch",
                 "--gpus", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == ["python", "-m", "oig"]
    multi = ["--print-launch", "--gpus", "8", "--num-machines", "2", "--machine-rank", "1", "--main-process-ip",
             "10.0.0.1", "--main-process-port", "6000"]
    assert main(["train", "--config", str(write_training(tmp_path, "Training:\n  distributed: ddp\n")), *multi]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[out.index("--main_process_port") + 1] == "6000" and out[out.index("--num_processes") + 1] == "16"


def test_print_launch_refuses_what_cannot_start(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    zero3 = write_training(tmp_path, "Training:\n  distributed: zero3\n")
    code = main(["train", "--config", str(zero3), "--print-launch", "--gpus", "2"])
    if importlib.util.find_spec("deepspeed") is None:  # the gpu extra is not installed here
        assert code == 1 and "needs DeepSpeed, from the gpu extra" in capsys.readouterr().err
    else:
        assert code == 0 and "configs/accelerate/zero3.yaml" in capsys.readouterr().out
    fsdp = write_training(tmp_path, "Training:\n  distributed: fsdp\n")
    assert main(["train", "--config", str(fsdp), "--print-launch", "--gpus", "2"]) == 1
    assert "set `base_model` in training.yaml" in capsys.readouterr().err
    local = write_training(tmp_path, "Training:\n  distributed: fsdp\n  base_model: ./my-model\n")
    assert main(["train", "--config", str(local), "--print-launch", "--gpus", "2"]) == 1
    assert "--allow-local-base-model" in capsys.readouterr().err
    assert main(["train", "--config", str(zero3), "--print-launch", "--gpus", "0"]) == 1
    assert "needs GPUs" in capsys.readouterr().err or importlib.util.find_spec("deepspeed") is None
    # Launch flags mean nothing to a training run: refused, not ignored.
    assert main(["train", "--config", str(zero3), "--num-machines", "2"]) == 2
    assert "--num-machines only go with --print-launch" in capsys.readouterr().err
    assert main(["train", "--config", str(zero3), "--print-launch", "--publish", "hub", "--output", "x"]) == 2
    assert "--publish, --output go with the training command after the printed launch" in capsys.readouterr().err


def test_the_workflow_runs_the_printed_command():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "train.yml").read_text())
    step = next(s for s in workflow["jobs"]["train"]["steps"] if s.get("id") == "train")
    script = step["run"]
    assert "oig train --print-launch" in script and '"${launch[@]}" "${args[@]}"' in script
    assert "--multi_gpu" not in script  # the mode is training.yaml's, through the shipped files


# --- in a run: the launch checked, the trackers' and kernels' packages, the sharded save ---------------------


def test_a_run_launched_otherwise_stops_before_its_run_folder(tmp_path, monkeypatch, capsys):
    from test_train import make_repo

    repo = make_repo(tmp_path / "repo", "Training:\n  distributed: fsdp\n")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", "--base-model", "tiny", "--publish", "none"]) == 1
    assert "training.yaml asks for fsdp, but this run was launched as one plain process" in capsys.readouterr().err
    assert not (repo / "runs").exists()


def test_trackers_and_kernels_need_their_packages(monkeypatch):
    from oig.train import args

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "wandb", "liger_kernel") else real(name, *a))
    args.check_packages({"report_to": "none"}, on_gpu=False)
    with pytest.raises(TrainError, match="report_to wandb needs the wandb package on this machine: pip install wandb"):
        args.check_packages({"report_to": ["wandb"]}, on_gpu=True)
    with pytest.raises(TrainError, match="use_liger_kernel needs a CUDA GPU"):
        args.check_packages({"use_liger_kernel": True}, on_gpu=False)
    with pytest.raises(TrainError, match=r"use_liger_kernel needs the gpu extra: pip install -c requirements/lock.txt"):
        args.check_packages({"use_liger_kernel": True}, on_gpu=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    args.check_packages({"report_to": ["trackio", "tensorboard", "wandb"], "use_liger_kernel": True}, on_gpu=True)


class FakeAccelerator:
    def __init__(self, main: bool):
        self.is_main_process = main
        self.barriers = 0

    def wait_for_everyone(self):
        self.barriers += 1


class FakeTrainer:
    """Each process of a sharded run calls save_model; the main process writes the gathered weights."""

    def __init__(self, main: bool):
        self.accelerator = FakeAccelerator(main)
        self.saved_to: list[str] = []

    def save_model(self, folder: str):
        self.saved_to.append(folder)
        if self.accelerator.is_main_process:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_text("gathered")


class FakeTokenizer:
    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")


def test_a_sharded_model_is_saved_by_every_process_and_swapped_in_whole(tmp_path):
    from oig.train.checkpoints import save_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "old.safetensors").write_text("previous")
    other, first = FakeTrainer(main=False), FakeTrainer(main=True)
    save_model(other, FakeTokenizer(), model_dir, config(), sharded=True)  # it writes nothing itself
    save_model(first, FakeTokenizer(), model_dir, config(), sharded=True)
    assert other.saved_to == first.saved_to == [str(tmp_path / "model.gathered")]  # the same folder for all
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing half-written beside it
    assert other.accelerator.barriers == first.accelerator.barriers == 2


def test_the_readme_shows_the_command_oig_prints():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("$ oig train --print-launch --gpus 8", 1)[1].split("```", 1)[0]
    shown = block.split("\n", 1)[1].replace("(printed one per line)", "").split()
    cmd = launch.launch_command(config(distributed="zero3", distributed_offload="all"), gpus=8, root=ROOT)
    assert shown == cmd
    assert "# training.yaml: distributed: zero3, distributed_offload: all" in block
