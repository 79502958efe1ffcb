"""The base model and its tokenizer, loaded without ever running the model's own code.

training.yaml comes from pull requests, and a model folder or Hub repo can ship Python (``auto_map``)
that ``trust_remote_code`` would import on the training machine, where the secrets are. So every
``from_pretrained`` passes ``trust_remote_code=False``; a base model whose config or tokenizer config
asks for its own code, or whose ``model_type`` transformers does not know, is refused before it loads
(``refuse_model_code``); ``model_init_kwargs`` may not set ``trust_remote_code`` or the other switches
that load code or pickles; and a local folder as the base model needs ``--allow-local-base-model``
(``check_base_model``).

``tiny`` is built offline (``oig.train.tiny``); anything else loads with ``from_pretrained``, and a
model without a chat template gets ChatML. torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import json
from pathlib import Path

from oig.train import tiny
from oig.train.args import use_bf16
from oig.train.context import TrainOptions
from oig.train.errors import TrainError
from oig.train.masking import special_token_text, training_template

# from_pretrained keywords that load code or pickles: model_init_kwargs in training.yaml may not set them.
UNSAFE_INIT_KWARGS = ("trust_remote_code", "code_revision", "weights_only", "use_kernels", "kernel_config",
                      "allow_all_kernels")



def looks_local(name: str, root: Path = Path(".")) -> bool:
    """Whether ``from_pretrained(name)`` would read a folder on this machine rather than a Hub repo:
    the path exists (here or under the repository root), or it is spelled as a path (``./x``, ``/x``,
    ``~/x``, a backslash or drive, more than the one slash of ORG/NAME)."""
    if name.startswith((".", "/", "~")) or "\\" in name or ":" in name or name.count("/") > 1:
        return True
    return any(p.exists() for p in (Path(name).expanduser(), Path(root) / name))


def _init_kwargs(config) -> dict:
    """training.yaml's model_init_kwargs as a dict (SFTConfig also takes it as a JSON string)."""
    value = config.training.get("model_init_kwargs") or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TrainError(f"training.yaml: model_init_kwargs is not a JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise TrainError("training.yaml: model_init_kwargs must be a mapping of from_pretrained keywords")
    return dict(value)


def check_base_model(name: str, config, opts: TrainOptions) -> None:
    """Refuse, before anything runs, a base model that could bring code to this machine: a local
    folder without --allow-local-base-model, or training.yaml keywords that let transformers import
    the model's Python or unpickle its weights."""
    if name != tiny.NAME and not opts.allow_local_base_model and looks_local(name, opts.root):
        raise TrainError(f"the base model {name!r} is a local path; a folder can carry code and pickles, so "
                         "training on one needs --allow-local-base-model (or use a Hub id ORG/NAME, or `tiny`)")
    init = _init_kwargs(config)
    for key in UNSAFE_INIT_KWARGS:
        if key in init:
            raise TrainError(f"training.yaml: model_init_kwargs must not set {key}: oig never runs a model's own "
                             "code or unpickles its weights; remove it")
    attention = init.get("attn_implementation")
    if isinstance(attention, str) and "/" in attention:
        raise TrainError(f"training.yaml: model_init_kwargs attn_implementation {attention!r} names a Hub kernel, "
                         "which is code from the Hub; use eager, sdpa or flash_attention_2")
    if config.training.get("trust_remote_code"):
        raise TrainError("training.yaml: trust_remote_code must not be set: oig never runs a model's own code; "
                         "remove it")


def refuse_model_code(name: str, revision: str | None = None) -> None:
    """Read the model's config.json and tokenizer_config.json (no code runs) and refuse a model that
    needs its own Python: an ``auto_map`` entry, or a ``model_type`` transformers does not know."""
    from transformers import CONFIG_MAPPING, PreTrainedConfig
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        model_config, _ = PreTrainedConfig.get_config_dict(name, revision=revision)
        tokenizer_config = get_tokenizer_config(name, revision=revision)
    except (OSError, ValueError, KeyError) as exc:  # not found, offline, not JSON
        raise TrainError(f"cannot load the base model {name!r}: {_first_line(exc)}") from None
    for file, doc in (("config.json", model_config), ("tokenizer_config.json", tokenizer_config)):
        auto_map = doc.get("auto_map") if isinstance(doc, dict) else None
        if auto_map:
            shown = ", ".join(f"{k}: {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict) else auto_map
            raise TrainError(f"the base model {name!r} needs its own Python code ({file} auto_map: {shown}); oig "
                             "never runs model code: use a model transformers supports without it")
    model_type = model_config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise TrainError(f"the base model {name!r} has model_type {model_type!r}, which transformers does not know: "
                         "it would need the model's own code, which oig never runs")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def load_base(name: str, base_dir: Path, conversations: list[dict], config, on_gpu: bool):
    """(model, tokenizer, training chat template) for ``name``: ``tiny`` (its tokenizer trained on
    ``conversations``), a Hub id or a folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == tiny.NAME:
        if (base_dir / "config.json").is_file():
            # A resumed run reuses the tokenizer it started with: its checkpoints use those ids.
            refuse_model_code(str(base_dir))
            tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
        else:
            model, tokenizer = tiny.build_tiny(tiny.texts_of(conversations), base_dir, seed=config.seed)
        return model, tokenizer, tokenizer.chat_template

    kwargs = _init_kwargs(config)
    if "dtype" not in kwargs:
        kwargs["dtype"] = torch.bfloat16 if on_gpu and use_bf16(config, on_gpu) else torch.float32
    if config.oig.get("load_in_4bit"):
        kwargs["quantization_config"] = _quantization(on_gpu)
    revision = kwargs.get("revision")
    refuse_model_code(name, revision)
    for key in UNSAFE_INIT_KWARGS:  # refused by check_base_model already; never passed on in any case
        kwargs.pop(key, None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs, trust_remote_code=False, weights_only=True)
    except (OSError, ValueError, KeyError) as exc:  # not found, offline, refused, an unknown architecture
        raise TrainError(f"cannot load the base model {name!r}: {_first_line(exc)}") from None
    if not tokenizer.chat_template:
        _add_chatml(model, tokenizer)
    return model, tokenizer, training_template(tokenizer)


def check_special_tokens(conversations: list[dict], tokenizer) -> None:
    """Refuse data whose text spells one of the tokenizer's special tokens (``<|im_start|>`` and the
    like): the chat template would turn it into the real token, letting a slice forge turns."""
    found = special_token_text(conversations, tokenizer)
    if found is None:
        return
    count, slices, first = found
    raise TrainError(f"{count} message(s) in slice(s) {', '.join(slices)} contain the text of the special token "
                     f"{first!r}, which the chat template would turn into a real control token; remove it from "
                     "the data (or reword it)")


def _quantization(on_gpu: bool):
    import importlib.util

    if not on_gpu:
        raise TrainError("load_in_4bit (QLoRA) needs a CUDA GPU; set it to false to train on the CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError("load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _add_chatml(model, tokenizer) -> None:
    """Give a model without a chat template ChatML, adding its two special tokens if they are new."""
    new = [t for t in (tiny.IM_START, tiny.IM_END) if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new})
        model.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = tiny.CHATML_TEMPLATE
    tokenizer.eos_token = tiny.IM_END  # the model must learn to end its turn, and generation to stop there
    model.config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
