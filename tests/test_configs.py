import dataclasses
import json

import numpy as np
import pytest

from tf_lm import LMConfig
from tf_lm.configs import PRESETS, TrainConfig


def test_presets_have_the_documented_shapes():
    nano = LMConfig.preset("nano", vocab_size=65)
    assert (nano.n_layer, nano.n_head, nano.n_embd, nano.block_size, nano.vocab_size) == (4, 4, 128, 64, 65)
    small = LMConfig.preset("char-small")
    assert (small.n_layer, small.n_head, small.n_embd, small.block_size) == (6, 6, 384, 256)
    gpt2 = LMConfig.preset("gpt2")
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.block_size, gpt2.vocab_size) == (12, 12, 768, 1024, 50257)
    assert set(PRESETS) == {"nano", "char-small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


def test_overrides_apply_and_config_is_frozen():
    config = LMConfig.preset("gpt2", n_layer=2, dropout=0.1)
    assert config.n_layer == 2 and config.dropout == 0.1 and config.n_embd == 768
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 3


def test_dict_round_trip():
    config = LMConfig.preset("nano")
    assert LMConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_embd": 130, "n_head": 4}, "divisible by `n_head`"),
        ({"block_size": 0}, "block_size"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": float("nan")}, "`dropout` must be in"),
        ({"dropout": "0.1"}, "`dropout` must be a number"),
        ({"layer_norm_epsilon": float("nan")}, "`layer_norm_epsilon` must be > 0"),
        ({"layer_norm_epsilon": float("inf")}, "`layer_norm_epsilon` must be > 0"),
        ({"layer_norm_epsilon": True}, "`layer_norm_epsilon` must be a number"),
        ({"n_layer": True}, "`n_layer` must be an integer >= 1. Received: `n_layer=True`"),
        ({"n_layer": 2.0}, "`n_layer` must be an integer >= 1. Received: `n_layer=2.0`"),
        ({"vocab_size": np.int64(0)}, "`vocab_size` must be an integer >= 1"),
    ],
)
def test_inconsistent_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LMConfig.preset("nano", **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": float("nan")}, "`learning_rate` must be > 0 and finite. Received: `learning_rate=nan`"),
        ({"learning_rate": float("inf")}, "`learning_rate` must be > 0 and finite. Received: `learning_rate=inf`"),
        ({"learning_rate": 0.0}, "`learning_rate` must be > 0"),
        ({"min_learning_rate": 1.0}, r"`min_learning_rate` must be in \[0, `learning_rate`\]"),
        ({"weight_decay": -0.1}, "`weight_decay` must be >= 0"),
        ({"weight_decay": float("nan")}, "`weight_decay` must be >= 0"),
        ({"beta1": 1.0}, r"`beta1` must be in \[0, 1\)"),
        ({"beta2": -0.5}, r"`beta2` must be in \[0, 1\)"),
        ({"grad_clip": float("nan")}, "`grad_clip` must be >= 0"),
        ({"seed": -1}, r"`seed` must be an integer in \[0, 2\*\*32\). Received: `seed=-1`"),
        ({"lora_rank": True, "init_from": "base"}, "`lora_rank` must be an integer >= 0"),
        ({"batch_size": True}, "`batch_size` must be an integer >= 1. Received: `batch_size=True`"),
        ({"warmup_steps": 1.5}, "`warmup_steps` must be an integer >= 0. Received: `warmup_steps=1.5`"),
        ({"seed": 2.0}, r"`seed` must be an integer in \[0, 2\*\*32\)"),
        ({"lora_rank": 8, "init_from": "base", "lora_alpha": float("nan")}, "`lora_alpha` must be > 0"),
        ({"lora_rank": 8, "init_from": "base", "lora_alpha": float("inf")}, "`lora_alpha` must be > 0"),
        ({"learning_rate": "1e-3"}, "`learning_rate` must be a number. Received: `learning_rate='1e-3'`"),
        ({"grad_clip": True}, "`grad_clip` must be a number. Received: `grad_clip=True`"),
    ],
)
def test_train_settings_are_refused_before_a_run_prepares_anything(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_train_lm_names_its_flags_in_the_config_errors():
    """The configs name fields in backticks, so `experiments.train_lm` prints the ones that are its flags as flags."""
    from absl import flags

    from experiments.flags import define_train_flags, in_flag_terms

    script_flags = flags.FlagValues()
    define_train_flags(script_flags)
    for make, message in [
        (lambda: TrainConfig(batch_size=0), "--batch_size must be an integer >= 1. Received: --batch_size=0"),
        (lambda: TrainConfig(steps=-5), "--steps must be an integer >= 1. Received: --steps=-5"),
        (lambda: TrainConfig(steps=20, warmup_steps=100),
         "--warmup_steps must be in [0, --steps). Received: --warmup_steps=100, --steps=20"),
        (lambda: TrainConfig(min_learning_rate=1.0),
         "--min_learning_rate must be in [0, --learning_rate]. Received: --min_learning_rate=1.0, "
         "--learning_rate=0.001"),
        (lambda: TrainConfig(lora_embeddings=True),
         "--lora_alpha, --lora_train_norms and --lora_embeddings only apply with --lora_rank >= 1. Received: "
         "--lora_alpha=None, --lora_train_norms=False, --lora_embeddings=True"),
        (lambda: LMConfig.preset("nano", n_layer=0), "--n_layer must be an integer >= 1. Received: --n_layer=0"),
        (lambda: LMConfig.preset("nano", n_embd=130), "--n_embd must be divisible by --n_head; pick --n_embd as a "
                                                      "multiple of --n_head. Received: --n_embd=130, --n_head=4"),
        (lambda: LMConfig.preset("nano", vocab_size=0),  # not a flag: the argument's name stays
         "`vocab_size` must be an integer >= 1. Received: `vocab_size=0`"),
    ]:
        with pytest.raises(ValueError) as error:
            make()
        assert in_flag_terms(str(error.value), script_flags) == message


def test_numpy_integers_are_taken_and_stored_as_python_ints():
    """As the layers take them (`positive_int`): a size read from an array is an integer like any other."""
    config = LMConfig.preset("nano", vocab_size=np.int64(65), n_layer=np.int32(2))
    assert config.vocab_size == 65 and type(config.vocab_size) is int and type(config.n_layer) is int
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    train = TrainConfig(batch_size=np.int64(4), steps=np.int32(10), warmup_steps=np.int64(2), seed=np.uint32(7))
    assert (train.batch_size, train.steps, train.warmup_steps, train.seed) == (4, 10, 2, 7)
    assert all(type(value) is int for value in (train.batch_size, train.steps, train.warmup_steps, train.seed))


def test_numpy_floats_are_taken_and_stored_as_python_floats():
    config = LMConfig.preset("nano", dropout=np.float32(0.25), layer_norm_epsilon=np.float64(1e-6))
    assert (config.dropout, config.layer_norm_epsilon) == (0.25, 1e-6) and type(config.dropout) is float
    train = TrainConfig(learning_rate=np.float32(0.5), min_learning_rate=np.float64(0.0), beta1=np.float32(0.5),
                        init_from="base", lora_rank=8, lora_alpha=np.float64(16.0))
    assert json.loads(json.dumps(train.to_dict())) == train.to_dict()
    assert (train.learning_rate, train.beta1, train.lora_alpha) == (0.5, 0.5, 16.0)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        LMConfig.preset("gpt5")


def test_unknown_dict_field_is_refused():
    with pytest.raises(ValueError, match=r"Unknown LMConfig fields \['n_layers'\]"):
        LMConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match=r"Unknown LMConfig fields \['n_layers'\]"):
        LMConfig.preset("nano", n_layers=3)


def test_gpt2_parameter_count_matches_the_published_124m():
    config = LMConfig.preset("gpt2")
    embeddings = config.vocab_size * config.n_embd + config.block_size * config.n_embd
    assert config.non_embedding_params() + embeddings == 124_439_808


def test_flops_per_token_counts_the_tied_heads_matmul():
    # 6 per weight and token, the token table included (the head multiplies by it), plus attention's 12·L·d·T:
    # nanoGPT's estimate_mfu. Without the head, GPT-2's MFU would read 1.37x too low.
    config = LMConfig.preset("gpt2")
    weights = 85_056_000 + 768 * 50257  # non-embedding, and the tied token table
    assert config.flops_per_token() == 6 * weights + 12 * 12 * 768 * 1024 == 855_166_464
    small = LMConfig(vocab_size=8192, block_size=64, n_layer=2, n_head=2, n_embd=64)
    assert small.flops_per_token(32) == 6 * (small.non_embedding_params() + 64 * 8192) + 12 * 2 * 64 * 32
