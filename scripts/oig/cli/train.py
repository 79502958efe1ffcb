"""oig train: fine-tune the model on the mixture, publish it, write training_log and model.yaml."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from oig.cli.args import add_allow_local_sources, add_data_dir


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune the model on the mixture and publish it",
        description="Build the mixture from data/ and training.yaml, fine-tune the base model with TRL's "
        "SFTTrainer (loss on assistant turns only), evaluate on a held-out split, save, publish, and write "
        "training_log and model.yaml in the current folder. Rerunning an interrupted run resumes from its "
        "last checkpoint. On several GPUs run it under `accelerate launch -m oig train`. "
        "Exit 0 when done, 1 on an error, 2 on a usage error.",
    )
    p.add_argument("--config", type=Path, default=Path("training.yaml"), metavar="FILE",
                   help="training configuration (default: training.yaml)")
    add_data_dir(p)
    p.add_argument("--base-model", default=None, metavar="MODEL",
                   help="model to fine-tune: a Hub id, a folder (with --allow-local-base-model), or `tiny` (a "
                   "small random model built offline from the mixture, with its own learning rate, epochs and batch "
                   "size; default: base_model in training.yaml). A model that needs its own Python code is refused")
    p.add_argument("--allow-local-base-model", action="store_true",
                   help="accept a local folder as the base model (a folder from a pull request could carry code "
                   "and pickles: only for folders you made)")
    p.add_argument("--publish", choices=["none", "local", "hub"], default="local",
                   help="none (model.yaml untouched), local (model.yaml names the run folder's model; default) "
                   "or hub (upload to hub_repo in training.yaml, on a branch named after the git branch)")
    p.add_argument("--together", action="store_true",
                   help="with --publish hub: also deploy the model on a Together dedicated endpoint")
    p.add_argument("--output", type=Path, default=None, metavar="DIR",
                   help="run folder for the mixture, checkpoints and the model (default: runs/RUN_ID)")
    p.add_argument("--root", type=Path, default=None, metavar="DIR", dest="results",
                   help="write training_log and model.yaml in DIR (default: the current folder, the repository "
                   "root); the previous model is DIR/model.yaml's. `make demo` uses runs/demo")
    p.add_argument("--mixture", type=Path, default=None, metavar="DIR",
                   help="train on a mixture `oig mix --out DIR` already wrote instead of building one")
    add_allow_local_sources(p)
    p.add_argument("--override-gate", action="store_true",
                   help="publish the model even when training.yaml's Gate fails (a maintainer's decision; "
                   "training_log records it)")
    bugs = p.add_mutually_exclusive_group()
    bugs.add_argument("--bugs", type=Path, default=None, metavar="FILE",
                      help="after training, ask the previous and the new model each bug in FILE (JSON, JSONL or "
                      "YAML) and record before, after and a verdict in training_log")
    bugs.add_argument("--bugs-repo", default=None, metavar="OWNER/NAME",
                      help="the same for the open issues labelled `bug` in a GitHub repository (GITHUB_TOKEN)")
    launch = p.add_argument_group("launching on GPUs (with --print-launch)")
    launch.add_argument("--print-launch", action="store_true",
                        help="print, one argument a line, the command that starts oig for training.yaml's "
                        "`distributed` (accelerate launch with configs/accelerate/MODE.yaml, or python -m oig for "
                        "one process); `train` and its arguments follow it. Trains nothing")
    launch.add_argument("--gpus", type=int, default=None, metavar="N",
                        help="GPUs on each machine (default: the GPUs torch sees)")
    launch.add_argument("--num-machines", type=int, default=1, metavar="N", help="machines (default 1)")
    launch.add_argument("--machine-rank", type=int, default=0, metavar="R",
                        help="this machine's rank, 0 on the main machine")
    launch.add_argument("--main-process-ip", default=None, metavar="HOST",
                        help="the main machine's address (several machines)")
    launch.add_argument("--main-process-port", type=int, default=29500, metavar="PORT",
                        help="the main machine's port (default 29500)")
    p.set_defaults(run=run)


LAUNCH_FLAGS = {"gpus": None, "num_machines": 1, "machine_rank": 0, "main_process_ip": None,
                "main_process_port": 29500}
# What only the training command uses (it follows the printed launch): refused with --print-launch.
RUN_FLAGS = {"publish": "local", "together": False, "output": None, "mixture": None, "bugs": None,
             "bugs_repo": None, "override_gate": False, "results": None, "allow_local_sources": False}


def _stray(args: argparse.Namespace, flags: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k, default in flags.items() if getattr(args, k) != default]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from oig.train.run import TrainOptions, train

    opts = TrainOptions(config=args.config, data=args.data, base_model=args.base_model, publish=args.publish,
                        together=args.together, output=args.output, mixture=args.mixture,
                        allow_local_sources=args.allow_local_sources,
                        allow_local_base_model=args.allow_local_base_model, bugs=args.bugs,
                        bugs_repo=args.bugs_repo, override_gate=args.override_gate, results=args.results)
    if args.print_launch:
        from oig.train.launch import launch_for

        if _stray(args, RUN_FLAGS):
            print(f"oig train: {', '.join(_stray(args, RUN_FLAGS))} go with the training command after the printed "
                  "launch, not with --print-launch", file=sys.stderr)
            return 2

        print("\n".join(launch_for(opts, gpus=args.gpus, machines=args.num_machines, machine_rank=args.machine_rank,
                                   main_ip=args.main_process_ip, main_port=args.main_process_port)))
        return 0
    if _stray(args, LAUNCH_FLAGS):
        print(f"oig train: {', '.join(_stray(args, LAUNCH_FLAGS))} only go with --print-launch", file=sys.stderr)
        return 2
    log = train(opts)
    if log.get("finished_at") is None:  # a secondary process under accelerate: the main one reports
        return 0
    if log.get("together_job"):
        print(f"oig train: {log['run_id']}: trained on Together, job {log['together_job'].get('id')}", file=sys.stderr)
    else:
        resumed = f", resumed from {log['resumed_from']}" if log.get("resumed_from") else ""
        print(f"oig train: {log['run_id']}: {log.get('steps')} steps{resumed}; train loss {log.get('train_loss')}, "
              f"eval loss {log.get('eval_loss')}; {log.get('tokens_per_second') or 'n/a'} tokens/s", file=sys.stderr)
    if log.get("bugs_summary"):
        summary = log["bugs_summary"]
        print(f"oig train: bugs: {summary['total']} checked, " + ", ".join(
            f"{n} {verdict}" for verdict, n in summary.items() if verdict != "total" and n), file=sys.stderr)
    where = log.get("model") or {}
    location = where.get("hub_repo") or where.get("local_path") or (where.get("together") or {}).get("model")
    wrote = "training_log and model.yaml" if log.get("published", {}).get("mode") != "none" else "training_log"
    where_to = f" in {args.results}" if args.results is not None else ""
    print(f"oig train: model at {location}; wrote {wrote}{where_to}", file=sys.stderr)
    return 0
