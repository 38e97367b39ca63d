"""`make_optimizer`: AdamW decays matrices only; float16 gets loss scaling; bad values are refused."""

import keras
import numpy as np
import pytest

from tf_lm import LMConfig, TransformerLM
from tf_lm.training import make_optimizer, no_decay_variables

CONFIG = LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def test_decay_spares_biases_layernorms_and_embeddings():
    model = TransformerLM(CONFIG)
    spared = {v.path.split("/", 1)[1] for v in no_decay_variables(model)}
    assert "embedding/token_embeddings/embeddings" in spared and "embedding/position_embeddings/embeddings" in spared
    assert "block_0/attention_norm/gamma" in spared and "block_0/mlp_in/bias" in spared
    assert not any(name.endswith("kernel") for name in spared)


def test_with_lora_the_token_tables_factors_are_spared_as_the_table_and_the_projections_factors_decay():
    from tf_lm.training.lora import enable_lora

    model = TransformerLM(CONFIG)
    enable_lora(model, rank=2, alpha=None, train_norms=False, embeddings=True)
    spared = {v.path.split("/", 1)[1] for v in no_decay_variables(model)}
    factors = {v.path.split("/", 1)[1] for v in model.trainable_variables if "lora" in v.path}
    assert {"embedding/token_embeddings/lora_embeddings_a", "embedding/token_embeddings/lora_embeddings_b"} <= spared
    assert {"block_0/attention/qkv/lora_kernel_a", "block_0/mlp_out/lora_kernel_b"} <= factors - spared


def test_only_matrices_shrink_under_pure_weight_decay():
    model = TransformerLM(CONFIG)
    optimizer = make_optimizer(model, learning_rate=0.1, weight_decay=0.5)
    before = [np.asarray(v) for v in model.trainable_variables]
    zero_grads = [keras.ops.zeros_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zero_grads, model.trainable_variables))  # Adam's step is 0; only decay acts
    spared = {id(v) for v in no_decay_variables(model)}
    for variable, old in zip(model.trainable_variables, before):
        new = np.asarray(variable)
        if id(variable) in spared:
            np.testing.assert_array_equal(new, old)
        else:
            np.testing.assert_allclose(new, old * (1 - 0.1 * 0.5), rtol=1e-6)


def test_mixed_float16_gets_loss_scaling_and_bfloat16_does_not():
    model = TransformerLM(CONFIG)
    assert isinstance(make_optimizer(model, 1e-3, precision="mixed_float16"), keras.optimizers.LossScaleOptimizer)
    assert isinstance(make_optimizer(model, 1e-3, precision="mixed_bfloat16"), keras.optimizers.AdamW)


def test_slots_exist_before_the_first_step():
    optimizer = make_optimizer(TransformerLM(CONFIG), 1e-3)
    assert len(optimizer.variables) > 2 * len(TransformerLM(CONFIG).trainable_variables)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"weight_decay": -1.0}, "weight_decay must be >= 0"), ({"beta2": 1.0}, "beta2 must be in"),
     ({"precision": "float8"}, "Unknown precision 'float8'")],
)
def test_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(TransformerLM(CONFIG), 1e-3, **kwargs)
