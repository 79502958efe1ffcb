"""JSON Schemas for the files contributors edit: slice files and training.yaml.

One cohesive table of definitions, not logic: both schemas and the key lists they are built from
(aliases, oig's own keys, refused fields, bounds), so that one file states all a contributor may write.

Defined here, in the package, because validation needs them at run time wherever oig is installed;
``schemas/*.json`` at the repository root are generated from these for editors (the
``# yaml-language-server: $schema=...`` line) and check-jsonschema. A test keeps them in sync::

    python -m oig.data.schemas   # rewrite schemas/slice.schema.json and schemas/training.schema.json
"""

from __future__ import annotations

import json
from pathlib import Path

from oig.data.evals import EVAL_SCHEMA
from oig.data.slices import COLUMN_ROLES
from oig.files import write_all_atomic

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
SHA256 = "^[0-9a-f]{64}$"
SHA1_OR_REF = "^[^\\s]+$"

MIXTURE_MEANING = (
    "Mixture weights are shares of the final mixture, from 0 to 1. Slices not listed share what is "
    "left (1 minus the listed weights, never below 0) in proportion to their size. With no Mixture "
    "section the mixture is the plain union of all slices. The total number of examples defaults to "
    "the number available across all slices (set it with MixtureTotal). A slice whose share is larger "
    "than the slice is repeated, every example used before any is used again; a smaller share samples "
    "without replacement. Example: slices a (100 examples), b (10) and c (40) with `a: 0.5` give "
    "a 75, b 15, c 60. If the listed weights add up to more than 1 they are scaled down to add up "
    "to 1 and unlisted slices get nothing (a warning)."
)

_text = {"type": "string", "minLength": 1}
_limit = {
    "type": "integer",
    "minimum": 1,
    "description": "Use at most this many rows, in the source's order.",
}
_on_bad_rows = {
    "enum": ["error", "skip"],
    "default": "error",
    "description": "What a row that does not convert does: `error` (the default) refuses the slice; `skip` "
    "leaves the row out and counts it (in `oig mix`'s manifest and the pull request summary), up to "
    "`max_bad_rows`.",
}
_max_bad_rows = {
    "type": "integer",
    "minimum": 0,
    "description": "With `on_bad_rows: skip` (and needed by it): more bad rows than this is an error.",
}


def column_roles_schema(description: str) -> dict:
    """``columns:``: role -> column name, for a dataset whose layout is not detected."""
    return {
        "type": "object",
        "description": description,
        "propertyNames": {"enum": list(COLUMN_ROLES)},
        "additionalProperties": _text,
        "minProperties": 1,
    }


def _jsonl_link(link_description: str) -> dict:
    """An entry that links a JSONL file, pinned by its sha256."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["link"],
        "properties": {
            "link": {**_text, "description": link_description},
            "sha256": {
                "type": "string",
                "pattern": SHA256,
                "description": "The file's sha256 (64 lowercase hex digits). It is enforced; without it "
                "validation warns with the value to add.",
            },
            "limit": _limit,
            "on_bad_rows": _on_bad_rows,
            "max_bad_rows": _max_bad_rows,
        },
    }


SLICE_SCHEMA: dict = {
    "$schema": SCHEMA_DRAFT,
    "$id": "urn:oig:schema:slice",
    "title": "oig data slice",
    "description": (
        "A slice of training data: data/<name>.yaml, where the slice's name is the file name. Give "
        "examples inline (IOPairs), link a Hugging Face dataset (HuggingFace) or an OpenAI-format "
        "fine-tuning JSONL file (OpenAIJsonl), or give preference pairs for DPO (Preferences); sections may "
        "be combined. Check it with `oig validate`."
    ),
    "type": "object",
    "additionalProperties": False,
    "anyOf": [
        {"required": ["IOPairs"]},
        {"required": ["HuggingFace"]},
        {"required": ["OpenAIJsonl"]},
        {"required": ["Preferences"]},
    ],
    "properties": {
        "IOPairs": {
            "description": "Inline examples. Each becomes one conversation: the input as the user's "
            "message, the output as the assistant's reply (the reply is what the model learns).",
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["input", "output"],
                "properties": {
                    "input": {**_text, "description": "What the user says."},
                    "output": {**_text, "description": "The answer the model should give."},
                },
            },
        },
        "HuggingFace": {
            "description": "Hugging Face datasets. Only data files are read (parquet, JSON lines, CSV); "
            "dataset scripts are never run. Common layouts are detected: messages, ShareGPT "
            "conversations, prompt/completion, instruction/input/output, question/answer, and OIG "
            "text with <human>:/<bot>: turns; name the columns with `columns` otherwise.",
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["link"],
                "properties": {
                    "link": {
                        **_text,
                        "description": "https://huggingface.co/datasets/ORG/NAME (or ORG/NAME).",
                    },
                    "revision": {
                        "type": "string",
                        "pattern": SHA1_OR_REF,
                        "description": "The dataset commit to use (a 40-character sha pins the "
                        "content). Without it the current main is used and validation warns with "
                        "the pin to add.",
                    },
                    "config": {**_text, "description": "The dataset configuration (subset) name."},
                    "split": {**_text, "default": "train", "description": "The split to read."},
                    "columns": column_roles_schema("Which column holds what, when the layout is not detected: "
                                                   "role -> column name, e.g. {question: q, answer: a}."),
                    "limit": _limit,
                    "on_bad_rows": _on_bad_rows,
                    "max_bad_rows": _max_bad_rows,
                },
            },
        },
        "OpenAIJsonl": {
            "description": "OpenAI fine-tuning JSONL files: chat lines {messages: [...]} (system "
            "messages, several turns, per-message weight 0/1 for loss masking) or legacy "
            "{prompt, completion} lines.",
            "type": "array",
            "minItems": 1,
            "items": _jsonl_link("An https URL of the JSONL file."),
        },
        "Preferences": {
            "description": "Preference pairs for DPO (`method: dpo` in training.yaml): a prompt with a "
            "chosen (better) and a rejected (worse) answer, inline or as a JSONL file of "
            "{prompt, chosen, rejected} lines (strings, or chat message lists). They are not part of the "
            "SFT mixture.",
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["prompt", "chosen", "rejected"],
                        "properties": {
                            "prompt": {**_text, "description": "What the user says."},
                            "chosen": {**_text, "description": "The better answer."},
                            "rejected": {**_text, "description": "The worse answer."},
                        },
                    },
                    _jsonl_link("An https URL of a JSONL file of preference pairs."),
                ]
            },
        },
        "description": {**_text, "description": "What this slice teaches the model."},
        "license": {
            **_text,
            "description": "The data's license as an SPDX identifier, e.g. CC-BY-4.0 or Apache-2.0.",
        },
        "source": {**_text, "description": "Where the data comes from (a URL or a citation)."},
        "fixes": {
            "type": "array",
            "description": "Numbers of the bug issues this slice fixes.",
            "items": {"type": "integer", "minimum": 1},
            "uniqueItems": True,
        },
        "holdout": {
            "type": "boolean",
            "description": "false: every example of this slice is trained on and none is held out for "
            "evaluation (default true: the slice gives its share of eval_size when it has at least 10 "
            "distinct examples).",
        },
    },
}

# Short names training.yaml accepts besides SFTConfig's own field names.
ALIASES = {
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
}

# training.yaml's `distributed` values, each an accelerate configuration in configs/accelerate/, and what
# `distributed_offload` may move to the CPU (oig.train.launch).
DISTRIBUTED_MODES = ("ddp", "fsdp", "zero2", "zero3")
OFFLOAD_MODES = ("none", "optimizer", "all")
# Experiment trackers `report_to` may name: the maintainers' branch sets them; a pull request cannot
# (oig pr-data takes only the mixture from it). Their credentials come from the runner's environment.
TRACKERS = ("trackio", "wandb", "tensorboard")

# oig's own keys in the Training section (not SFTConfig fields). name -> JSON Schema.
OIG_KEYS: dict[str, dict] = {
    "base_model": {
        "type": "string",
        "minLength": 1,
        "description": "The model to fine-tune: a Hugging Face model id, a local path, or `tiny` (a "
        "small random model built offline, for tests and demos).",
    },
    "momentum": {
        "type": "number",
        "minimum": 0,
        "exclusiveMaximum": 1,
        "description": "Momentum of the optimizer in use: SGD's momentum, or beta1 of Adam-style "
        "optimizers.",
    },
    "eval_size": {
        "type": "number",
        "minimum": 0,
        "description": "Held-out evaluation examples, taken per slice from its distinct examples before "
        "the mixture is upsampled: a fraction (< 1) of each slice, or a count (>= 1) shared among the "
        "slices in proportion to their distinct examples; 0 turns the split off (default 0.1, at most "
        "1000). A slice under 10 distinct examples, or with `holdout: false`, is never held out.",
    },
    "backend": {
        "enum": ["trl", "together"],
        "description": "Where to train: `trl` on the runner's GPUs, or `together` (hosted fine-tuning).",
    },
    "method": {
        "enum": ["sft", "dpo"],
        "description": "`sft` (default): supervised fine-tuning on the mixture. `dpo`: SFT on the mixture "
        "when there is one, then DPO (TRL's DPOTrainer) on the slices' Preferences pairs.",
    },
    "dpo_beta": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "DPO's beta: how far the model may move from the reference model (default 0.1).",
    },
    "lora": {"type": "boolean", "description": "Train LoRA adapters with peft instead of all weights."},
    "lora_r": {"type": "integer", "minimum": 1, "maximum": 1024, "description": "LoRA rank."},
    "lora_alpha": {"type": "number", "exclusiveMinimum": 0, "description": "LoRA scaling alpha."},
    "lora_dropout": {"type": "number", "minimum": 0, "maximum": 1, "description": "LoRA dropout."},
    "lora_target_modules": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "Modules LoRA adapts, e.g. all-linear or [q_proj, v_proj].",
    },
    "load_in_4bit": {
        "type": "boolean",
        "description": "QLoRA: load the base model in 4-bit (bitsandbytes, GPU only); implies lora.",
    },
    "hub_repo": {"type": "string", "minLength": 1, "description": "Hub repo id to publish to (ORG/NAME)."},
    "together_model_name": {
        "type": "string",
        "minLength": 1,
        "description": "Name of the model registered on Together.",
    },
    "distributed": {
        "enum": list(DISTRIBUTED_MODES),
        "description": "How several GPUs share the training (oig.train.launch; `oig train --print-launch` shows "
        "the command): `ddp` (a copy of the model on each GPU), `fsdp` (FSDP 2, full shard, each decoder layer "
        "wrapped), `zero2` (DeepSpeed ZeRO-2: optimizer state and gradients sharded) or `zero3` (ZeRO-3: "
        "the weights too). Each maps to a file shipped in configs/accelerate/. Default: ddp on several GPUs, "
        "one process on one.",
    },
    "distributed_offload": {
        "enum": list(OFFLOAD_MODES),
        "description": "What moves to CPU memory to fit a larger model: `none` (default), `optimizer` (ZeRO-2/3: "
        "the optimizer state) or `all` (ZeRO-3: the optimizer state and the weights; FSDP: the weights, "
        "gradients and optimizer state). Slower; needs `distributed: fsdp`, `zero2` or `zero3`.",
    },
}


# SFTConfig fields a training.yaml may not set, with why. Some belong to oig (publishing, resuming),
# some to the runner (the distributed set-up, trackers), and some would run code or read paths on the
# runner. They are not in the schema; validation names the reason.
_OIG_PUBLISHES = "oig publishes the model itself: set `hub_repo` and dispatch with publish: hub"
_RUNNER_DECIDES = ("the runner's launch configuration decides the distributed set-up: set `distributed: ddp`, "
                   "`fsdp`, `zero2` or `zero3` instead (oig launches with its shipped accelerate files)")
_TRACKER_SET_UP = ("where a tracker logs is the maintainers' to set up on the runner (its environment), never "
                   "training.yaml's, which may only name the tracker in `report_to`")
REFUSED_FIELDS: dict[str, str] = {
    "trust_remote_code": "oig never runs code that comes with a model; a model that needs custom code is "
    "refused. Remove it",
    "push_to_hub": _OIG_PUBLISHES,
    "hub_model_id": _OIG_PUBLISHES,
    "hub_strategy": _OIG_PUBLISHES,
    "hub_private_repo": _OIG_PUBLISHES,
    "hub_always_push": _OIG_PUBLISHES,
    "hub_revision": _OIG_PUBLISHES,
    "resume_from_checkpoint": "oig resumes an interrupted run from its own checkpoints: rerun the same command",
    "deepspeed": _RUNNER_DECIDES,
    "fsdp": _RUNNER_DECIDES,
    "fsdp_config": _RUNNER_DECIDES,
    "accelerator_config": _RUNNER_DECIDES,
    "parallelism_config": _RUNNER_DECIDES,
    "local_rank": _RUNNER_DECIDES,
    "ddp_backend": _RUNNER_DECIDES,
    "chat_template_path": "it names a file on the runner; oig trains with the base model's own chat template "
    "(ChatML when it has none)",
    "liger_kernel_config": "`use_liger_kernel: true` turns Liger's kernels on (the gpu extra); their selection is "
    "Liger's default",
    "trackio_space_id": _TRACKER_SET_UP,
    "trackio_bucket_id": _TRACKER_SET_UP,
    "trackio_static_space_id": _TRACKER_SET_UP,
    "project": _TRACKER_SET_UP,
    "torch_compile_backend": "a compiler backend can load code on the runner; `torch_compile: true` uses the default",
}

# Bounds on what a training.yaml can make the runner spend, and on values that would only crash
# training after the model has loaded. Added to the schema (editors show them) and checked by validate.
MAX_MIXTURE_TOTAL = 10_000_000  # examples; also at most MIXTURE_TOTAL_FACTOR x the examples available
MIXTURE_TOTAL_FACTOR = 10
FIELD_BOUNDS: dict[str, dict] = {
    "learning_rate": {"exclusiveMinimum": 0, "maximum": 1},
    "num_train_epochs": {"exclusiveMinimum": 0, "maximum": 100},
    "max_steps": {"minimum": -1, "maximum": 1_000_000},  # -1 (or 0): the epochs decide
    "per_device_train_batch_size": {"minimum": 1, "maximum": 4096},
    "per_device_eval_batch_size": {"minimum": 1, "maximum": 4096},
    "gradient_accumulation_steps": {"minimum": 1, "maximum": 4096},
    "max_length": {"minimum": 1, "maximum": 1_048_576},
    "save_total_limit": {"type": "integer", "minimum": 1, "maximum": 20},  # always set: never unbounded
    "save_steps": {"exclusiveMinimum": 0},
    "logging_steps": {"exclusiveMinimum": 0},
    "eval_steps": {"exclusiveMinimum": 0},
    "warmup_steps": {"minimum": 0},
    "weight_decay": {"minimum": 0},
    "max_grad_norm": {"minimum": 0},
    "dataloader_num_workers": {"minimum": 0, "maximum": 16},
    "dataloader_prefetch_factor": {"minimum": 1, "maximum": 16},
    "dataset_num_proc": {"minimum": 1, "maximum": 64},
    "eval_accumulation_steps": {"minimum": 1},
    "torch_empty_cache_steps": {"minimum": 1},
    # Trackers: only these (their Spaces and projects are refused: see REFUSED_FIELDS).
    "report_to": {"anyOf": [{"enum": ["none", *TRACKERS]},
                            {"type": "array", "uniqueItems": True, "items": {"enum": ["none", *TRACKERS]}}]},
    # Only these keys reach from_pretrained; anything else (a token, a cache path, code) is refused.
    "model_init_kwargs": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "dtype": {"enum": ["auto", "bfloat16", "float16", "float32"],
                      "description": "The dtype the base model loads in (default: bfloat16 on a GPU that has it)."},
            "torch_dtype": {"enum": ["auto", "bfloat16", "float16", "float32"], "description": "Old name of dtype."},
            "attn_implementation": {
                "enum": ["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"],
                "description": "The attention kernel; kernels from the Hub are refused (they are code).",
            },
            "revision": {"type": "string", "pattern": SHA1_OR_REF,
                         "description": "The base model's commit on the Hub (a 40-character sha pins it)."},
            "low_cpu_mem_usage": {"type": "boolean", "description": "Load the weights with less CPU memory."},
        },
    },
}


# training.yaml's Eval and Gate sections: how `oig eval` measures a model and what a release must pass.
# Folders are relative to the repository (checked by data.config: no absolute paths, no `..`).
_SCORE_DROP = {"type": "number", "minimum": 0, "maximum": 1}
EVAL_SECTION_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "description": "How `oig eval` measures a model: the eval suites, lm-evaluation-harness benchmarks and a "
    "judged comparison with the previous model.",
    "properties": {
        "suites": {"type": "string", "minLength": 1, "default": "evals",
                   "description": "The folder of eval suites (<name>.yaml), relative to the repository."},
        "compare": {"type": "boolean", "default": True,
                    "description": "Evaluate the previous model too, and report each suite's change."},
        "lm_eval": {
            "type": "object",
            "additionalProperties": False,
            "required": ["tasks"],
            "description": "Benchmarks through lm-evaluation-harness (the `eval` extra).",
            "properties": {
                "tasks": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                          "description": "lm-evaluation-harness task names, e.g. [hellaswag, arc_easy]."},
                "limit": {"type": "integer", "minimum": 1, "description": "At most this many examples per task."},
                "num_fewshot": {"type": "integer", "minimum": 0, "maximum": 100,
                                "description": "Few-shot examples in each prompt (default: the task's own)."},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 1,
                               "description": "Examples per forward pass."},
                "include_path": {"type": "string", "minLength": 1,
                                 "description": "A folder of custom task YAMLs, relative to the repository."},
            },
        },
        "judge": {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "base_url"],
            "description": "The LLM judge of the comparison with the previous model: an OpenAI-compatible server.",
            "properties": {
                "model": {"type": "string", "minLength": 1, "description": "The judge's model id on the server."},
                "base_url": {"type": "string", "pattern": "^https?://[^\\s]+$",
                             "description": "The server's base URL, without /v1."},
                "api_key_env": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$",
                                "description": "The environment variable holding the server's API key (never "
                                "the key itself)."},
            },
        },
        "comparison_suite": {"type": "string", "minLength": 1,
                             "description": "The eval suite whose prompts both models answer for the judge."},
    },
}
GATE_SECTION_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "description": "What a new model must pass against the previous one before it is released.",
    "properties": {
        "max_drop": {
            "description": "The largest allowed drop of a suite's score (a share from 0 to 1: 0.05 is five "
            "points) against the previous model: one number for every suite, or suite name -> number with "
            "`default` for the suites not named.",
            "anyOf": [_SCORE_DROP, {"type": "object", "minProperties": 1, "additionalProperties": _SCORE_DROP}],
        },
        "max_bugs_regressed": {"type": "integer", "minimum": 0, "default": 0,
                               "description": "The most bug reports that may pass on the previous model and fail "
                               "on the new one."},
        "min_win_rate": {"type": "number", "minimum": 0, "maximum": 1,
                         "description": "The new model's lowest allowed win rate in the judged comparison with "
                         "the previous model (ties count half; needs Eval.judge)."},
    },
}


def _sft_properties() -> dict[str, dict]:
    from oig.data.sftfields import fields

    props: dict[str, dict] = {}
    for name, f in fields().items():
        if name in REFUSED_FIELDS:
            continue
        p: dict = {"description": f["help"] or name}
        if "type" in f:
            p["type"] = f["type"] if len(f["type"]) > 1 else f["type"][0]
        if "enum" in f:
            p["enum"] = f["enum"]
        if f.get("default") is not None:
            p["default"] = f["default"]
        p.update(FIELD_BOUNDS.get(name, {}))
        props[name] = p
    return props


def training_schema() -> dict:
    """The schema of training.yaml: both the seed's lists of one-key maps and plain mappings."""
    props = _sft_properties()
    for alias, target in ALIASES.items():
        props[alias] = {**props[target], "description": f"Short for {target}. " + props[target]["description"]}
    props.update(OIG_KEYS)
    training_map = {"type": "object", "additionalProperties": False, "properties": props}
    one_key_maps = {
        "type": "array",
        "items": {**training_map, "minProperties": 1, "maxProperties": 1},
    }
    weight = {"type": "number", "minimum": 0, "description": MIXTURE_MEANING}
    mixture_map = {"type": "object", "additionalProperties": weight, "description": MIXTURE_MEANING}
    return {
        "$schema": SCHEMA_DRAFT,
        "$id": "urn:oig:schema:training",
        "title": "oig training configuration",
        "description": "Hyperparameters and mixture weights for `oig mix` and `oig train`. Training "
        "takes every TRL SFTConfig field by its own name, the short names lr, epochs, batch_size and "
        "momentum, and oig's own keys.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "Training": {
                "description": "Hyperparameters: a mapping, or a list of one-key mappings.",
                "anyOf": [training_map, one_key_maps],
            },
            "Mixture": {
                "description": MIXTURE_MEANING,
                "anyOf": [
                    mixture_map,
                    {"type": "array", "items": {**mixture_map, "minProperties": 1, "maxProperties": 1}},
                ],
            },
            "MixtureTotal": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_MIXTURE_TOTAL,
                "description": "Number of examples in the mixture. Default: all examples available. At "
                f"most {MIXTURE_TOTAL_FACTOR}x the examples available and {MAX_MIXTURE_TOTAL:,} in all.",
            },
            "Eval": EVAL_SECTION_SCHEMA,
            "Gate": GATE_SECTION_SCHEMA,
        },
    }


SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"


def rendered() -> dict[str, str]:
    """File name -> JSON text, exactly as shipped in schemas/."""
    return {
        "slice.schema.json": json.dumps(SLICE_SCHEMA, indent=2) + "\n",
        "training.schema.json": json.dumps(training_schema(), indent=2) + "\n",
        "eval.schema.json": json.dumps(EVAL_SCHEMA, indent=2) + "\n",  # oig.data.evals
    }


def main() -> None:
    files = rendered()
    write_all_atomic([(SCHEMA_DIR / name, text) for name, text in files.items()])  # both or neither
    for name in files:
        print(f"wrote schemas/{name}")


if __name__ == "__main__":
    main()
