"""Benchmark section "generation": new tokens/s of `tf_lm.generate` beside HF `TFGPT2LMHeadModel.generate`.

Both sides decode greedily with a KV cache inside one XLA-compiled program (HF's documented way:
`tf.function(model.generate, jit_compile=True)`), from random weights of the same shape, on the same
16-token prompts, for the same number of new tokens, in the same process, their timed windows alternating so both
see the same load. Compilation happens in the warm-up calls and is not timed. The contexts are 1024 positions
(GPT-2's), since 16 + 256 tokens do not fit char-small's preset context of 256; the 6x384 shape is char-small's
otherwise.
"""

from __future__ import annotations

import numpy as np

from experiments.benchmarks.common import Row, best_rate, hf_gpt2, hf_xla_generate, race
from tf_lm import LMConfig, TransformerLM
from tf_lm.generation import generate

PROMPT_LENGTH = 16
SHAPES = (
    ("char-small shape (6x384, V=65)", LMConfig.preset("char-small", block_size=1024, dropout=0.0)),
    ("gpt2 shape (12x768, V=50257)", LMConfig.preset("gpt2")),
)


def _weight_streaming_bound(model: TransformerLM, steps: int) -> float:
    """Tokens/s of a loop that only multiplies one vector by every weight matrix a decode step reads (batch 1).

    At batch 1 a decode step is a chain of matrix-vector products, so reading the float32 weights from memory
    once per token bounds every implementation, ours and HF's alike: this measures that bound here. The products
    here are independent, so XLA may spread them over the cores; a real step's dependent chain cannot, which
    makes this an upper bound.
    """
    import tensorflow as tf

    # Every Dense kernel, and the token embedding as the tied head; position embeddings are only gathered.
    matrices = [w.value for w in model.weights if len(w.shape) == 2 and "position" not in w.path]

    @tf.function(jit_compile=True)
    def loop():
        def body(i, carry):
            total = carry
            for matrix in matrices:
                # The vector depends on the carry, so XLA cannot hoist the products out of the loop.
                if "token_embeddings" in matrix.name:
                    vector = tf.fill([1, matrix.shape[1]], carry * 1e-9)
                    total += tf.reduce_sum(tf.matmul(vector, matrix, transpose_b=True))
                else:
                    vector = tf.fill([1, matrix.shape[0]], carry * 1e-9)
                    total += tf.reduce_sum(tf.matmul(vector, matrix))
            return i + 1, total

        return tf.while_loop(lambda i, carry: i < steps, body, (tf.constant(0), tf.constant(1.0)))[1]

    return best_rate(lambda: loop().numpy(), steps, warmup=1, repeats=3, min_seconds=0.5)


def run(quick: bool) -> list[Row]:
    """New tokens/s at batch 1 and 16 for both shapes; `quick` decodes 32 tokens and skips batch 16 at 12x768.

    Batch-1 rows also note the weight-streaming bound, the most tokens/s any float32 decoder can reach here.
    """
    max_new_tokens = 32 if quick else 256
    rows = []
    rng = np.random.default_rng(0)
    for shape_name, config in SHAPES:
        model = TransformerLM(config)
        hf_run = hf_xla_generate(hf_gpt2(config))
        for batch in (1, 16):
            if quick and batch == 16 and config.n_layer > 6:
                continue
            prompts = rng.integers(0, config.vocab_size, (batch, PROMPT_LENGTH), dtype=np.int32)
            prompt_lists = prompts.tolist()
            new_tokens = batch * max_new_tokens
            # The 12x768 model takes seconds per call on 2 cores: one warm-up, few windows.
            slow = config.n_layer > 6
            settings = dict(warmup=1, repeats=2 if slow else 3, min_seconds=0.5 if quick else 1.0)
            rates = race({"ours": lambda: generate(model, prompt_lists, max_new_tokens=max_new_tokens),
                          "hf": lambda: hf_run(prompts, max_new_tokens, do_sample=False)}, new_tokens, **settings)
            ours, peer = rates["ours"], rates["hf"]
            notes = "random weights; compile not timed"
            if batch == 1:
                bound = _weight_streaming_bound(model, max_new_tokens)
                notes += f"; float32 weight-streaming bound: {bound:,.0f} tokens/s ({bound / peer:.2f}x HF)"
            rows.append(Row(
                section="generation",
                name=f"greedy decode, {shape_name}, batch {batch}, {PROMPT_LENGTH}+{max_new_tokens} tokens",
                unit="new tokens/s", ours=ours, peer=peer, peer_name="HF TFGPT2LMHeadModel.generate (XLA)",
                target=">= 2x at batch 1" if batch == 1 else "",
                notes=notes,
            ))
    return rows
