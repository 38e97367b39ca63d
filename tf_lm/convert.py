"""GPT-2 checkpoints <-> `TransformerLM`, both ways, with numpy only (no torch).

In: an HF `TFGPT2LMHeadModel`, or a checkpoint directory (`config.json` + `model.safetensors` in PyTorch or HF TF
naming). Out: the directory `GPT2LMHeadModel.save_pretrained` writes, with the tokenizer as `tokenizer.json`.
Every route goes through one flat dict keyed by GPT-2's PyTorch state-dict names (`h.0.attn.c_attn.weight`),
and one mapping of those names onto the model's variables. HF's Conv1D stores kernels as `[in, out]`, which is
already the layout of a Keras Dense kernel, and its fused `c_attn` is `[q | k | v]` with heads contiguous inside
each: exactly the layout `CausalSelfAttention` reshapes into.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from tf_lm.configs import LMConfig
from tf_lm.fileio import (
    EXPORT_MARKER,
    atomic_directory,
    gfile,
    is_local,
    read_json_object,
    safetensors_errors,
    write_export_marker,
    write_file,
)

if TYPE_CHECKING:  # Keras loads TensorFlow: reading a checkpoint's config and tensors needs neither
    from tf_lm.model import TransformerLM

# The files of an HF checkpoint directory that hold the model.
GPT2_CONFIG_FILE = "config.json"
GPT2_WEIGHTS_FILE = "model.safetensors"
HF_EXPORT_KIND = "Hugging Face GPT-2 checkpoint"
_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def config_from_gpt2(hf_config: dict) -> LMConfig:
    """The `LMConfig` of an HF GPT-2 `config.json`.

    Raises:
        ValueError: for an activation other than tanh-GELU, an MLP width other than 4·n_embd, attention scaled
            otherwise than by 1/sqrt(head_dim), or an output layer not tied to the token embeddings.
    """
    missing = [key for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if key not in hf_config]
    if missing:
        raise ValueError(
            f"The config has no {', '.join(missing)}, which every GPT-2 config has. "
            f"Received: model_type={hf_config.get('model_type')!r}"
        )
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        raise ValueError(f"Only tanh-GELU GPT-2 checkpoints convert. Received: activation_function={activation!r}")
    n_inner = hf_config.get("n_inner")
    if n_inner not in (None, 4 * hf_config["n_embd"]):
        raise ValueError(f"Only GPT-2 checkpoints with n_inner = 4·n_embd convert. Received: n_inner={n_inner}")
    # Settings GPT2LMHeadModel honours that TransformerLM has no equivalent for: loading them would silently
    # give other logits. (reorder_and_upcast_attn only changes the precision of the scores: float32 here, except
    # the product itself under a mixed policy, whose query is scaled first so it cannot overflow.)
    for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("tie_word_embeddings", True)):
        if hf_config.get(key, supported) != supported:
            raise ValueError(
                f"Only GPT-2 checkpoints with {key}={supported} convert. Received: {key}={hf_config[key]!r}"
            )
    return LMConfig(
        vocab_size=hf_config["vocab_size"],
        block_size=hf_config["n_positions"],
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=hf_config["n_embd"],
        layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
    )


def gpt2_state_from_hf(hf_model) -> dict[str, np.ndarray]:
    """Reads a (built) HF TF GPT-2 into GPT-2's PyTorch names."""
    main = hf_model.transformer
    state = {"wte.weight": main.wte.weights[0].numpy(), "wpe.weight": main.wpe.weights[0].numpy()}
    for i, block in enumerate(main.h):
        layers = {
            "ln_1": block.ln_1, "ln_2": block.ln_2, "attn.c_attn": block.attn.c_attn,
            "attn.c_proj": block.attn.c_proj, "mlp.c_fc": block.mlp.c_fc, "mlp.c_proj": block.mlp.c_proj,
        }
        for name, layer in layers.items():
            if name.startswith("ln"):
                state[f"h.{i}.{name}.weight"] = layer.gamma.numpy()
                state[f"h.{i}.{name}.bias"] = layer.beta.numpy()
            else:
                state[f"h.{i}.{name}.weight"] = layer.weight.numpy()
                state[f"h.{i}.{name}.bias"] = layer.bias.numpy().reshape(-1)
    state["ln_f.weight"] = main.ln_f.gamma.numpy()
    state["ln_f.bias"] = main.ln_f.beta.numpy()
    return state


def _gpt2_variables(model: TransformerLM) -> dict:
    """GPT-2's PyTorch state-dict names -> the model's variables: the one mapping both directions use."""
    variables = {"wte.weight": model.embedding.token_embeddings, "wpe.weight": model.embedding.position_embeddings}
    for i, block in enumerate(model.blocks):
        norms = {"ln_1": block.attention_norm, "ln_2": block.mlp_norm}
        denses = {"attn.c_attn": block.attention.qkv_dense, "attn.c_proj": block.attention.output_dense,
                  "mlp.c_fc": block.mlp_in, "mlp.c_proj": block.mlp_out}
        for name, layer in norms.items():
            variables[f"h.{i}.{name}.weight"], variables[f"h.{i}.{name}.bias"] = layer.gamma, layer.beta
        for name, layer in denses.items():
            variables[f"h.{i}.{name}.weight"], variables[f"h.{i}.{name}.bias"] = layer.kernel, layer.bias
    variables["ln_f.weight"], variables["ln_f.bias"] = model.final_norm.gamma, model.final_norm.beta
    return variables


def _pytorch_name(name: str) -> str:
    """GPT-2's PyTorch name of a tensor named either way: `transformer.h.0.ln_1.weight` (PyTorch), or
    `transformer/h_._0/ln_1/gamma:0` (what HF's TF `save_pretrained` writes)."""
    if "/" not in name:
        return name.removeprefix("transformer.")
    parts = name.split(":")[0].split("/")
    parts = parts[1:] if parts[0] == "transformer" else parts
    suffix = {"gamma": "weight", "beta": "bias", "embeddings": "weight"}.get(parts[-1], parts[-1])
    return ".".join(parts[:-1] + [suffix]).replace("h_._", "h.")


def load_gpt2_state(model: TransformerLM, state: dict[str, np.ndarray]) -> TransformerLM:
    """Copies a GPT-2 state dict into `model`: PyTorch names (optional `transformer.` prefix) or HF TF names.

    Raises:
        ValueError: if a tensor is missing or its shape differs from the model's, or an `lm_head.weight` is not
            the token embeddings (the model's output layer is tied to them).
    """
    state = {_pytorch_name(name): value for name, value in state.items()}
    head = state.get("lm_head.weight")
    if head is not None and "wte.weight" in state and not np.array_equal(head, state["wte.weight"]):
        raise ValueError(
            "The GPT-2 checkpoint's lm_head.weight differs from its token embeddings (wte.weight); only checkpoints "
            "with a tied output layer convert."
        )
    for name, variable in _gpt2_variables(model).items():
        if name not in state:
            raise ValueError(f"The GPT-2 checkpoint has no tensor {name!r}; is it a GPT-2 checkpoint?")
        value = np.asarray(state[name], dtype=np.float32)
        if name.endswith(".bias") and value.ndim == 2 and value.shape[0] == 1:  # HF TF Conv1D biases are [1, out]
            value = value[0]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for {name!r}: checkpoint {value.shape}, model {tuple(variable.shape)}; "
                "build the model from the checkpoint's own config."
            )
        variable.assign(value)
    return model


def gpt2_state(model: TransformerLM) -> dict[str, np.ndarray]:
    """The model's weights under GPT-2's PyTorch names (`transformer.h.0.attn.c_attn.weight`), float32.

    Conv1D kernels are `[in, out]` like Keras Dense kernels, so no tensor is transposed.

    Raises:
        ValueError: if the model holds weights GPT-2 has no place for (it is not a plain GPT-2 architecture).
    """
    variables = _gpt2_variables(model)
    mapped = {id(variable) for variable in variables.values()}
    extra = [variable.path for variable in model.trainable_weights if id(variable) not in mapped]
    if extra:
        raise ValueError(
            f"The model has weights a GPT-2 checkpoint has no place for ({', '.join(extra[:3])}); only a plain "
            "TransformerLM (no LoRA factors, 4·n_embd MLP) exports."
        )
    return {f"transformer.{name}": np.ascontiguousarray(variable.numpy(), dtype=np.float32)
            for name, variable in variables.items()}


def gpt2_config(config: LMConfig, eos_token_id: int | None = None) -> dict:
    """HF `GPT2Config` values (as `config.json` holds them) for an `LMConfig`; the inverse of `config_from_gpt2`.

    Written out rather than through `transformers.GPT2Config`: importing transformers switches `tf.keras` to
    tf_keras for the process (TF_USE_LEGACY_KERAS=1), so only `tf_lm.bert` imports it. Every setting that
    GPT2LMHeadModel would otherwise default is stated, so a later transformers changing a default changes nothing.
    `n_ctx` (equal to `n_positions`, as in GPT-2's own config.json) is no longer read by transformers, but
    llama.cpp's `convert_hf_to_gguf.py` requires it.
    """
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
        "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "use_cache": True,
        "bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "tie_word_embeddings": True,
        "dtype": "float32",  # transformers >= 4.56 and 5 read `dtype` (older ones `torch_dtype`, default float32)
    }


def save_gpt2_checkpoint(model: TransformerLM, directory: str, tokenizer=None, eos_token_id: int | None = None) -> None:
    """Writes `model` (and `tokenizer`) as the directory `GPT2LMHeadModel.save_pretrained` writes.

    `config.json`, `model.safetensors` (PyTorch names and layout) and `generation_config.json`: PyTorch
    `transformers`, vLLM and llama.cpp's converter read them, and so does `from_gpt2_safetensors`. The tied
    `lm_head.weight` is left out, as HF does. With `tokenizer`, also `tokenizer.json` and `tokenizer_config.json`,
    so `AutoTokenizer.from_pretrained` loads it: a BPE tokenizer as a `GPT2TokenizerFast`, a char tokenizer as a
    `PreTrainedTokenizerFast` over a word-level vocabulary of its characters (see `CharTokenizer.to_hf`). The
    directory is built beside `directory` and swapped in whole (`tf_lm.fileio.atomic_directory`); any
    `tf.io.gfile` path works. An earlier export is replaced only if it holds nothing but the files it was written
    with (listed in its `EXPORT_MARKER`), so a file added to it since (the `.gguf` llama.cpp's converter writes
    into the model directory by default) is never deleted.

    Args:
        eos_token_id: the end-of-text id for the configs; default the tokenizer's.

    Raises:
        ValueError: if the model is not a plain GPT-2 architecture (see `gpt2_state`), or `directory` is a
            non-empty directory that holds no earlier export (a downloaded HF model is never replaced), or an
            earlier export holding other files too; it is left untouched.
    """
    from safetensors.numpy import save

    state = gpt2_state(model)
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = tokenizer.eos_id
    with atomic_directory(directory, marker=EXPORT_MARKER, kind=HF_EXPORT_KIND) as staging:
        # transformers refuses a safetensors file whose metadata does not name its framework.
        write_file(os.path.join(staging, GPT2_WEIGHTS_FILE), save(state, metadata={"format": "pt"}))
        _write_hf_configs(model.config, staging, eos_token_id)
        fingerprint = {}
        if tokenizer is not None:
            from tf_lm.data.tokenizers import load_tokenizer

            _write_hf_tokenizer(tokenizer, staging, model_max_length=model.config.block_size)
            # As a reader will load the files (a char tokenizer comes back from its tokenizer.json), so that
            # `--init_from` of this directory can tell them from files edited or swapped since.
            fingerprint = {"tokenizer_fingerprint": load_tokenizer(staging).fingerprint}
        write_export_marker(staging, "tf_lm.convert.save_gpt2_checkpoint", HF_EXPORT_KIND, **fingerprint)


def _write_hf_configs(config: LMConfig, directory: str, eos_token_id: int | None) -> None:
    write_file(os.path.join(directory, GPT2_CONFIG_FILE), json.dumps(gpt2_config(config, eos_token_id), indent=2))
    # What GenerationConfig.save_pretrained writes: only the settings that differ from its defaults.
    generation = {} if eos_token_id is None else {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
    write_file(os.path.join(directory, "generation_config.json"), json.dumps(generation, indent=2))


def _write_hf_tokenizer(tokenizer, directory: str, model_max_length: int) -> None:
    hf_tokenizer = tokenizer.to_hf()
    serialised = hf_tokenizer.to_str(pretty=True)
    write_file(os.path.join(directory, "tokenizer.json"), serialised)
    eos = None if tokenizer.eos_id is None else hf_tokenizer.id_to_token(tokenizer.eos_id)
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast" if tokenizer.is_char_level else "GPT2TokenizerFast",
        "model_max_length": model_max_length,
        # HF's default clean-up deletes spaces before punctuation, which would break decode(encode(text)) == text.
        "clean_up_tokenization_spaces": False,
        # Written even when null: GPT2TokenizerFast defaults a missing one to <|endoftext|>, which for a tokenizer
        # without it is a new id beyond the model's vocabulary. A char tokenizer maps an unseen character to its
        # unknown character (or refuses it), never to the end-of-text id.
        "bos_token": eos, "eos_token": eos,
        "unk_token": tokenizer.unknown_token if tokenizer.is_char_level else eos,
    }
    if not tokenizer.is_char_level:
        # GPT2TokenizerFast sets its ByteLevel pre-tokenizer's add_prefix_space to this setting (default False),
        # so a tokenizer.json with a prefix space would otherwise encode differently in HF.
        pre_tokenizer = json.loads(serialised)["pre_tokenizer"] or {}
        settings["add_prefix_space"] = bool(pre_tokenizer.get("add_prefix_space", False))
    write_file(os.path.join(directory, "tokenizer_config.json"), json.dumps(settings, indent=2))


def from_hf_gpt2(hf_model) -> TransformerLM:
    """Converts an HF `TFGPT2LMHeadModel` (built from a config, or `from_pretrained`) to a `TransformerLM`.

    Example:
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> hf = TFGPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32))
    >>> model = from_hf_gpt2(hf)
    """
    from tf_lm.model import TransformerLM

    if not getattr(hf_model, "built", False):
        hf_model(hf_model.dummy_inputs)
    config = config_from_gpt2(hf_model.config.to_dict())
    return load_gpt2_state(TransformerLM(config), gpt2_state_from_hf(hf_model))


def read_gpt2_config(checkpoint_dir: str) -> LMConfig:
    """The `LMConfig` of a GPT-2 checkpoint directory's `config.json`, on any `tf.io.gfile` filesystem.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is damaged (not a JSON object), or not a GPT-2 config `TransformerLM` can express (see
            `config_from_gpt2`), naming it.
    """
    path = _checkpoint_file(checkpoint_dir, GPT2_CONFIG_FILE)
    hf_config = read_json_object(path)
    try:
        return config_from_gpt2(hf_config)
    except ValueError as error:
        # The names in the message are the file's keys, not arguments: without backticks, a script does not
        # print them as its flags (`n_head` would read as --n_head).
        reason = str(error).replace("`", "")
        raise ValueError(f"{path} is not a GPT-2 config tf_lm loads: {reason[0].lower()}{reason[1:]}") from None


def read_gpt2_state(checkpoint_dir: str) -> dict:
    """The tensors of a GPT-2 checkpoint directory's `model.safetensors` as numpy arrays, by their names in the
    file (PyTorch or TF naming), on any `tf.io.gfile` filesystem.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not a readable safetensors file (damaged, or cut short by an interrupted download),
            naming it.
    """
    from safetensors.numpy import load, load_file

    path = _checkpoint_file(checkpoint_dir, GPT2_WEIGHTS_FILE)
    with safetensors_errors(path):
        if is_local(path):
            return load_file(path)  # tensor by tensor, without a second copy of the file in memory
        with gfile(path).GFile(path, "rb") as f:
            return load(f.read())


def _checkpoint_file(checkpoint_dir: str, name: str) -> str:
    path = os.path.join(checkpoint_dir, name)
    if not gfile(path).exists(path):
        raise FileNotFoundError(f"GPT-2 checkpoint file not found: {path}")
    return path


def from_gpt2_safetensors(checkpoint_dir: str) -> TransformerLM:
    """Loads a GPT-2 checkpoint directory (`config.json` + `model.safetensors`) with numpy only: no torch.

    Raises:
        FileNotFoundError: if either file is missing.
    """
    from tf_lm.model import TransformerLM

    return load_gpt2_state(TransformerLM(read_gpt2_config(checkpoint_dir)), read_gpt2_state(checkpoint_dir))
