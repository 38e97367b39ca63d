"""Export a model and its char-level tokenizer as a SavedModel that serves text in, text out.

The SavedModel needs only TensorFlow: the weights, the decoding loop (prefill + cached steps + the sampler)
and the tokenizer all live in the graph. Char-level tokenisation is two lookup tables (character -> id as a
hash table, id -> character as a constant gathered from), so the `generate` signature takes and returns
strings and TensorFlow Serving can serve it as is. The graph keeps dynamic shapes (any batch, prompt length
and `max_new_tokens`) and is not XLA-compiled, so it runs wherever TensorFlow does. Past the model's context
it slides the window exactly as `generate` does, or (exported with `context_policy="refuse"`) fails; a bad
request fails with an `InvalidArgumentError` whose message (TensorFlow's "Graph execution error: ...", several lines)
contains "Invalid generate request: ...", naming what is wrong.

Signature `generate`:
    prompt: string `[batch]`, UTF-8 prompts (at least one; each at least one character, every character in the
        vocabulary).
    max_new_tokens: int32 scalar.
    seed: int64 scalar, for random samplers (ignored by greedy).
  returns
    text: string `[batch]`, the new text only (up to and including a stop character).
    token_ids: int32 `[batch, steps]`, the new ids, 0 after a row's stop.
    lengths: int32 `[batch]`, the new tokens of each row.
"""

from __future__ import annotations

import tensorflow as tf

from tf_lm.fileio import EXPORT_MARKER, atomic_directory, write_export_marker
from tf_lm.generation import speculative
from tf_lm.generation.generate import CONTEXT_POLICIES, SEED_LIMIT, _drafter, max_new_tokens_limit, next_fn, prefill
from tf_lm.generation.samplers import Sampler, get_sampler

EXPORT_KIND = "SavedModel export"


def _check(condition, message):
    """An in-graph check of the request that fails with `message` alone, not TensorFlow's dump of the tensors.

    TensorFlow prints the message as a quoted string, escaping quotes: messages have none.
    """
    return tf.debugging.Assert(condition, [f"Invalid generate request: {message}."], name="check_request")


class GenerationModule(tf.Module):
    """A `tf.Module` holding the model, the char tables and the sampler, with a `generate` tf.function.

    Args:
        model: a `TransformerLM`.
        tokenizer: a char-level tokenizer (`tokenizer.is_char_level`), with `chars` and `unknown_token`.
        sampler: a `Sampler`, fixed at export time.
        stop_token_ids: optional ints; a row stops at (and includes) the first one it emits.
        context_policy: "slide" (default) or "refuse", as `generate`'s: past the model's context the window
            slides, or the call fails with one line naming the limit.
        draft_model, drafter, num_speculative_tokens: speculative decoding baked in, as `generate`'s; a request
            that does not fit the context with k spare positions decodes without drafts, as `generate` does.

    Raises:
        ValueError: if the tokenizer is not char-level or does not fit the model's vocabulary, or for an unknown
            `context_policy` or bad speculative settings (a sampler speculation cannot draw from included).

    Example:
    >>> module = GenerationModule(model, CharTokenizer.from_text("hello"), GreedySampler())  # doctest: +SKIP
    >>> module.generate(tf.constant(["he"]), tf.constant(5), tf.constant(0, tf.int64))["text"]  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, sampler: Sampler, stop_token_ids=None, context_policy: str = "slide",
                 draft_model=None, drafter: str | None = None, num_speculative_tokens: int | None = None):
        super().__init__(name="tf_lm_generation")
        drafter = _drafter(model, draft_model, drafter, num_speculative_tokens, sampler)
        if context_policy not in CONTEXT_POLICIES:
            raise ValueError(
                f"context_policy must be one of {list(CONTEXT_POLICIES)}. Received: context_policy={context_policy!r}"
            )
        if not getattr(tokenizer, "is_char_level", False):
            raise ValueError(
                f"Only char-level tokenizers can be exported with in-graph tokenisation; got {tokenizer!r}. "
                "Export a model trained with `tokenizer=char`."
            )
        if tokenizer.vocab_size != model.config.vocab_size:  # an id without text would fail the served call
            raise ValueError(
                f"The tokenizer has {tokenizer.vocab_size} ids but the model {model.config.vocab_size}; "
                "export a model with the tokenizer it was trained with."
            )
        # The variables are tracked in a plain list, the model itself only through the closure below: a tracked
        # Keras model would add its own serving function to the SavedModel.
        self.model_variables = list(model.variables) + ([] if draft_model is None else list(draft_model.variables))
        self.block_size = model.config.block_size
        chars = tf.constant(list(tokenizer.chars))
        unknown_id = -1 if tokenizer.unknown_token is None else list(tokenizer.chars).index(tokenizer.unknown_token)
        self.char_to_id = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(chars, tf.range(len(tokenizer.chars), dtype=tf.int32)),
            default_value=unknown_id,
        )
        # Every id's text, the end-of-text id's included: a prompt never encodes to it, but the model may emit it.
        self.id_to_char = tf.Variable(list(tokenizer.tokens), trainable=False, name="id_to_char")
        stop_token_ids = [int(t) for t in stop_token_ids or []]
        self.stop_token_ids = tf.constant(stop_token_ids, tf.int32, shape=[len(stop_token_ids)])

        def generate(prompt, max_new_tokens, seed):
            chars = tf.strings.unicode_split(prompt, "UTF-8")  # (B, (L)) ragged
            ids = self.char_to_id.lookup(chars)  # (B, (L))
            if context_policy == "slide":
                ids = ids[:, -self.block_size :]  # the model sees at most block_size tokens: a prompt's last ones
            lengths = tf.cast(ids.row_lengths(), tf.int32)  # (B,)
            checks = [
                _check(tf.size(prompt) > 0, "the batch holds no prompts; pass at least one"),
                _check(tf.reduce_all(ids.flat_values >= 0), "a prompt holds a character outside the vocabulary"),
                _check(tf.reduce_all(lengths > 0), "every prompt needs at least one character"),
                _check(max_new_tokens > 0, "max_new_tokens must be >= 1"),
                _check((seed >= 0) & (seed < SEED_LIMIT), "seed must be in [0, 2**62), as for generate"),
            ]
            # One check per policy bounds max_new_tokens from above (refusing bounds it below the int32 limit), so a
            # request past the limit is told one reason, always the same.
            if context_policy == "refuse":
                checks.append(_check(
                    # In int64: a prompt plus max_new_tokens near 2**31 would wrap around in int32 and pass.
                    tf.reduce_all(tf.cast(lengths, tf.int64) + tf.cast(max_new_tokens, tf.int64) <= self.block_size),
                    f"a prompt plus max_new_tokens is longer than the model context (block_size={self.block_size}), "
                    "which this SavedModel refuses (exported with context_policy=refuse)",
                ))
            else:
                limit = max_new_tokens_limit(self.block_size)
                checks.append(_check(
                    max_new_tokens <= limit,
                    f"max_new_tokens must be at most {limit} for this model (block_size={self.block_size}): decoding "
                    "indexes the prompt, the new tokens and a window past them with int32",
                ))
            with tf.control_dependencies(checks):
                right_padded = ids.to_tensor(default_value=0)  # (B, P)
            if drafter is not None:  # a speculative round's first draft call reads two prompt columns
                right_padded = tf.pad(right_padded, [[0, 0], [0, tf.maximum(2 - tf.shape(right_padded)[1], 0)]])
            prompt_length = tf.shape(right_padded)[1]
            pad_lengths = prompt_length - lengths  # (B,)
            source = tf.range(prompt_length)[None, :] - pad_lengths[:, None]  # (B, P): slot -> source column
            left_padded = tf.where(source >= 0, tf.gather(right_padded, tf.maximum(source, 0), batch_dims=1), 0)

            seed_pair = tf.cast(tf.stack([seed // 2**31, seed % 2**31]), tf.int32)  # as generate's int seed

            def plain():
                tokens, state = prefill(model, left_padded, pad_lengths, max_new_tokens)
                # The shapes are dynamic, so whether a call slides is only known when it runs: the loop keeps the
                # branch.
                tokens, _, index, _ = sampler(
                    next_fn(model, slide=context_policy == "slide"), tokens, state, prompt_length,
                    prompt_length + max_new_tokens, seed_pair, self.stop_token_ids, prompt_length=prompt_length,
                )
                return tokens[:, prompt_length:index]  # (B, steps)

            def speculate():
                state = speculative.prefill(model, drafter, left_padded, pad_lengths, max_new_tokens, drafter.k)
                end = prompt_length + max_new_tokens
                state = speculative.rounds(model, drafter, sampler, state, pad_lengths, end, end, seed_pair,
                                           self.stop_token_ids, prompt_length)
                return state["tokens"][:, prompt_length:end]  # (B, N), zeros after a row's stop

            if drafter is None:
                new = plain()
            else:
                spare = self.block_size - max_new_tokens - drafter.k
                new = tf.cond(spare >= tf.maximum(prompt_length, 2), speculate, plain)
            is_stop = tf.reduce_any(new[:, :, None] == self.stop_token_ids[None, None, :], axis=-1)  # (B, steps)
            # A row's length runs up to and including its first stop token.
            first_stop = tf.where(
                tf.reduce_any(is_stop, axis=1), tf.argmax(tf.cast(is_stop, tf.int32), axis=1, output_type=tf.int32) + 1,
                tf.shape(new)[1],
            )  # (B,)
            keep = tf.range(tf.shape(new)[1])[None, :] < first_stop[:, None]  # (B, steps)
            new = tf.where(keep, new, 0)
            text = tf.strings.reduce_join(
                tf.ragged.boolean_mask(tf.gather(self.id_to_char, new), keep), axis=1
            )  # (B,)
            return {"text": text, "token_ids": new, "lengths": first_stop}

        self.generate = tf.function(generate, input_signature=[
            tf.TensorSpec([None], tf.string, name="prompt"),
            tf.TensorSpec([], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([], tf.int64, name="seed"),
        ])


def export_saved_model(model, tokenizer, export_dir: str, sampler: str | Sampler = "greedy", temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, stop_token_ids=None,
                       context_policy: str = "slide", draft_model=None, drafter: str | None = None,
                       num_speculative_tokens: int | None = None) -> None:
    """Writes a SavedModel with a `generate` signature (text in, text out) to `export_dir`.

    The directory is built beside `export_dir` and swapped into place (`tf_lm.fileio.atomic_directory`): an
    earlier export is replaced only once the new one is complete, and anything at `export_dir` that is not an
    empty directory or an earlier export (which holds `EXPORT_MARKER`) is refused untouched.

    Args:
        model: a `TransformerLM`.
        tokenizer: its char-level tokenizer.
        export_dir: str, the SavedModel directory to (re)create.
        sampler, temperature, top_k, top_p: the decoding strategy baked into the graph, as `generate`.
        stop_token_ids: optional ints that end a row.
        context_policy: "slide" (default) or "refuse", as `generate`'s.
        draft_model, drafter, num_speculative_tokens: speculative decoding baked into the graph, as `generate`'s.

    Raises:
        ValueError: for a non-char tokenizer, bad sampler settings, an unknown `context_policy`, or an `export_dir`
            that is not ours.

    Example:
    >>> export_saved_model(model, tokenizer, "exports/shakespeare")  # doctest: +SKIP
    >>> serve = tf.saved_model.load("exports/shakespeare").signatures["generate"]  # doctest: +SKIP
    >>> serve(prompt=tf.constant(["ROMEO:"]), max_new_tokens=tf.constant(50),
    ...       seed=tf.constant(0, tf.int64))["text"]  # doctest: +SKIP
    """
    module = GenerationModule(model, tokenizer, get_sampler(sampler, temperature, top_k, top_p), stop_token_ids,
                              context_policy, draft_model, drafter, num_speculative_tokens)
    with atomic_directory(export_dir, marker=EXPORT_MARKER, kind=EXPORT_KIND) as staging:
        tf.saved_model.save(module, staging, signatures={"generate": module.generate})
        write_export_marker(staging, __name__, EXPORT_KIND, signature="generate")
