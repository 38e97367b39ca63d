"""Benchmark section "generation": new tokens/s of `tf_lm.generate` beside HF `TFGPT2LMHeadModel.generate`.

Both sides decode greedily with a KV cache inside one XLA-compiled program (HF's documented way:
`tf.function(model.generate, jit_compile=True)`), from random weights of the same shape, on the same
16-token prompts, for the same number of new tokens, in the same process. Compilation happens in the warm-up
calls and is not timed. The contexts are 1024 positions (GPT-2's), since 16 + 256 tokens do not fit
char-small's preset context of 256; the 6x384 shape is char-small's otherwise.
"""

from __future__ import annotations

import numpy as np

from experiments.benchmarks.common import Row, best_rate
from tf_lm import LMConfig, TransformerLM
from tf_lm.generation import generate

PROMPT_LENGTH = 16
SHAPES = (
    ("char-small shape (6x384, V=65)", LMConfig.preset("char-small", block_size=1024, dropout=0.0)),
    ("gpt2 shape (12x768, V=50257)", LMConfig.preset("gpt2")),
)


def _hf_generate(config: LMConfig):
    """HF's XLA-compiled greedy `generate` for a random `TFGPT2LMHeadModel` of `config`'s shape."""
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = TFGPT2LMHeadModel(hf_config)
    xla_generate = tf.function(model.generate, jit_compile=True)

    def run(prompts: np.ndarray, max_new_tokens: int):
        # eos_token_id=None: random weights must not stop early, so both sides make exactly max_new_tokens.
        return xla_generate(
            tf.constant(prompts), attention_mask=tf.ones_like(prompts), max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        ).numpy()

    return run


def run(quick: bool) -> list[Row]:
    """New tokens/s at batch 1 and 16 for both shapes; `quick` decodes 32 tokens and skips batch 16 at 12x768."""
    max_new_tokens = 32 if quick else 256
    rows = []
    rng = np.random.default_rng(0)
    for shape_name, config in SHAPES:
        model = TransformerLM(config)
        hf_run = _hf_generate(config)
        for batch in (1, 16):
            if quick and batch == 16 and config.n_layer > 6:
                continue
            prompts = rng.integers(0, config.vocab_size, (batch, PROMPT_LENGTH), dtype=np.int32)
            prompt_lists = prompts.tolist()
            new_tokens = batch * max_new_tokens
            # The 12x768 model takes seconds per call on 2 cores: one warm-up, few windows.
            slow = config.n_layer > 6
            settings = dict(warmup=1, repeats=2 if slow else 3, min_seconds=0.5 if quick else 1.0)
            ours = best_rate(lambda: generate(model, prompt_lists, max_new_tokens=max_new_tokens),
                             new_tokens, **settings)
            peer = best_rate(lambda: hf_run(prompts, max_new_tokens), new_tokens, **settings)
            rows.append(Row(
                section="generation",
                name=f"greedy decode, {shape_name}, batch {batch}, {PROMPT_LENGTH}+{max_new_tokens} tokens",
                unit="new tokens/s", ours=ours, peer=peer, peer_name="HF TFGPT2LMHeadModel.generate (XLA)",
                target=">= 2x at batch 1" if batch == 1 else "",
                notes="random weights; compile not timed",
            ))
    return rows
