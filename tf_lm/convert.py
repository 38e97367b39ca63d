"""Weights from GPT-2 checkpoints into `TransformerLM`: an HF `TFGPT2LMHeadModel`, or safetensors via numpy.

Both routes produce the same flat dict keyed by GPT-2's PyTorch state-dict names (`h.0.attn.c_attn.weight`),
and one function copies that dict into the model, checking every shape. HF's Conv1D stores kernels as
`[in, out]`, which is already the layout of a Keras Dense kernel, and its fused `c_attn` is `[q | k | v]`
with heads contiguous inside each: exactly the layout `CausalSelfAttention` reshapes into.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tf_lm.configs import LMConfig
from tf_lm.model import TransformerLM

_GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def _config_from_gpt2(hf_config: dict) -> LMConfig:
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        raise ValueError(f"Only tanh-GELU GPT-2 checkpoints convert. Received: activation_function={activation!r}")
    n_inner = hf_config.get("n_inner")
    if n_inner not in (None, 4 * hf_config["n_embd"]):
        raise ValueError(f"Only GPT-2 checkpoints with n_inner = 4·n_embd convert. Received: n_inner={n_inner}")
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


def load_gpt2_state(model: TransformerLM, state: dict[str, np.ndarray]) -> TransformerLM:
    """Copies a GPT-2 state dict (PyTorch names, optional `transformer.` prefix) into `model`.

    Raises:
        ValueError: if a tensor is missing or its shape differs from the model's.
    """
    state = {name.removeprefix("transformer."): value for name, value in state.items()}

    def assign(variable, name):
        if name not in state:
            raise ValueError(f"The GPT-2 checkpoint has no tensor {name!r}; is it a GPT-2 checkpoint?")
        value = np.asarray(state[name], dtype=np.float32)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for {name!r}: checkpoint {value.shape}, model {tuple(variable.shape)}; "
                "build the model from the checkpoint's own config."
            )
        variable.assign(value)

    assign(model.embedding.token_embeddings, "wte.weight")
    assign(model.embedding.position_embeddings, "wpe.weight")
    for i, block in enumerate(model.blocks):
        pairs = {
            "ln_1": block.attention_norm, "ln_2": block.mlp_norm, "attn.c_attn": block.attention.qkv_dense,
            "attn.c_proj": block.attention.output_dense, "mlp.c_fc": block.mlp_in, "mlp.c_proj": block.mlp_out,
        }
        for name, layer in pairs.items():
            if name.startswith("ln"):
                assign(layer.gamma, f"h.{i}.{name}.weight")
                assign(layer.beta, f"h.{i}.{name}.bias")
            else:
                assign(layer.kernel, f"h.{i}.{name}.weight")
                assign(layer.bias, f"h.{i}.{name}.bias")
    assign(model.final_norm.gamma, "ln_f.weight")
    assign(model.final_norm.beta, "ln_f.bias")
    return model


def from_hf_gpt2(hf_model) -> TransformerLM:
    """Converts an HF `TFGPT2LMHeadModel` (built from a config, or `from_pretrained`) to a `TransformerLM`.

    Example:
    >>> from transformers import GPT2Config, TFGPT2LMHeadModel
    >>> hf = TFGPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32))
    >>> model = from_hf_gpt2(hf)
    """
    if not getattr(hf_model, "built", False):
        hf_model(hf_model.dummy_inputs)
    config = _config_from_gpt2(hf_model.config.to_dict())
    return load_gpt2_state(TransformerLM(config), gpt2_state_from_hf(hf_model))


def from_gpt2_safetensors(checkpoint_dir: str) -> TransformerLM:
    """Loads a GPT-2 checkpoint directory (`config.json` + `model.safetensors`) with numpy only: no torch.

    Raises:
        FileNotFoundError: if either file is missing.
    """
    from safetensors.numpy import load_file

    paths = [os.path.join(checkpoint_dir, name) for name in ("config.json", "model.safetensors")]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GPT-2 checkpoint file not found: {path}")
    with open(paths[0]) as f:
        config = _config_from_gpt2(json.load(f))
    return load_gpt2_state(TransformerLM(config), load_file(paths[1]))
