"""`generate` and `stream`: prompt ids in, new token ids out, decoded with the KV cache in one compiled loop.

How a batch is laid out: the prompts are left-padded to a common length P (bucketed to a power of two, so
nearby lengths share one compiled program) and followed by room for the N new tokens, in one `[B, P + N]`
token buffer; the model's KV cache is preallocated to P + N slots. Padded slots are masked out of attention
and each real token gets position "number of real tokens before it", so a row of a padded batch sees exactly
what it would see alone. The prompt (but its last token) is prefilled in one call; then every loop step feeds
one token, writes its keys/values into the cache and samples the next one.

Context policy: generation refuses (ValueError), it does not slide the window. A prompt plus `max_new_tokens`
must fit in the model's `block_size`; with learned absolute positions a sliding window would need the whole
window recomputed every step, which defeats the cache. An empty prompt is refused too: the model has no
"start" token to condition on, so pass at least one token (e.g. a newline).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tf_lm.generation.samplers import Sampler, get_sampler

# Smallest prompt bucket: shorter prompts share one program instead of compiling one per length.
_MIN_PROMPT_BUCKET = 8


def _dim(tensor, axis):
    """The static size of `axis` when known (XLA wants constants for shapes), else a dynamic scalar."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def prefill(model, prompt, pad_lengths, max_new_tokens):
    """Lays out the token buffer and runs the prompt (but its last token) through the model's cache.

    Works with static shapes (the XLA path) and dynamic ones (the exported SavedModel) alike.

    Args:
        model: a `TransformerLM`.
        prompt: int32 `[batch, P]`, left-padded prompts.
        pad_lengths: int32 `[batch]`, number of padding slots at the start of each row.
        max_new_tokens: int or int32 scalar, N.

    Returns:
        `(tokens [batch, P + N], cache, cache_mask [batch, P + N] bool)`: the buffer with the prompt in place,
        the cache holding slots `[0, P - 1)`, and the mask of real (non-padding) slots.
    """
    batch, prompt_length = _dim(prompt, 0), _dim(prompt, 1)
    total = prompt_length + max_new_tokens
    tokens = tf.pad(prompt, [[0, 0], [0, max_new_tokens]])  # (B, P + N)
    cache_mask = tf.range(total)[None, :] >= pad_lengths[:, None]  # (B, P + N)
    cache = model.init_cache(batch, total)
    # The last prompt token is left for the loop's first step, which returns the first new token's logits.
    context = prompt[:, :-1]  # (B, P - 1)
    positions = tf.maximum(tf.range(prompt_length - 1)[None, :] - pad_lengths[:, None], 0)  # (B, P - 1)
    _, cache = model.call_with_cache(context, cache, 0, padding_mask=cache_mask, position_ids=positions)
    return tokens, cache, cache_mask


def next_fn(model, pad_lengths, cache_mask):
    """The sampler's `next(tokens, cache, index)`: feeds token `index - 1`, returns the logits of token `index`."""

    def next(tokens, cache, index):
        # A gather, not `tokens[:, index - 1 : index]`: XLA cannot tell that slice's size is 1 from a dynamic
        # index, and silently treats it as a dynamically-sized slice.
        token = tf.gather(tokens, index - 1, axis=1)[:, None]  # (B, 1)
        positions = (index - 1 - pad_lengths)[:, None]  # (B, 1)
        logits, cache = model.call_with_cache(
            token, cache, index - 1, padding_mask=cache_mask, position_ids=positions
        )  # (B, 1, V)
        return logits[:, 0], cache

    return next


class _Programs:
    """The compiled programs of one (model, sampler): the whole decode, and its start/advance halves for streaming.

    TensorFlow traces (and XLA compiles) each one per input shape, so a call with a batch size, prompt bucket
    and `max_new_tokens` seen before reuses its program.
    """

    def __init__(self, model, sampler: Sampler):
        # A weak reference: the programs are cached per model, and must not keep the model alive themselves.
        model_ref = weakref.ref(model)

        @tf.function(jit_compile=True)
        def run(prompt, pad_lengths, seed, stop_token_ids, max_new_tokens):
            model = model_ref()
            prompt_length = prompt.shape[1]
            tokens, cache, cache_mask = prefill(model, prompt, pad_lengths, max_new_tokens)
            tokens, _, index, _ = sampler(
                next_fn(model, pad_lengths, cache_mask), tokens, cache, prompt_length,
                prompt_length + max_new_tokens, seed, stop_token_ids, prompt_length=prompt_length,
            )
            return tokens[:, prompt_length:], index - prompt_length  # (B, N), steps run

        @tf.function(jit_compile=True)
        def start(prompt, pad_lengths, max_new_tokens):
            return prefill(model_ref(), prompt, pad_lengths, max_new_tokens)

        @tf.function(jit_compile=True)
        def advance(tokens, cache, cache_mask, pad_lengths, index, end_index, done, seed, stop_token_ids,
                    prompt_length):
            return sampler(
                next_fn(model_ref(), pad_lengths, cache_mask), tokens, cache, index, end_index, seed,
                stop_token_ids, done, prompt_length,
            )

        self.run, self.start, self.advance = run, start, advance


_PROGRAMS: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def _programs(model, sampler: Sampler) -> _Programs:
    key = (type(sampler), tuple(sorted(sampler.get_config().items())))
    per_model = _PROGRAMS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _Programs(model, sampler)
    return per_model[key]


def _prompt_rows(prompt_ids, padding_mask) -> list[np.ndarray]:
    """The real tokens of each prompt row, from a ragged list or a (masked) `[batch, time]` array."""
    if isinstance(prompt_ids, (list, tuple)) and all(isinstance(row, (list, tuple, np.ndarray)) for row in prompt_ids):
        if padding_mask is not None:
            raise ValueError("padding_mask is for a padded [batch, time] array; ragged lists need none.")
        rows = [np.asarray(row).reshape(-1) for row in prompt_ids]
    else:
        array = np.asarray(prompt_ids)
        if array.ndim != 2:
            raise ValueError(
                f"prompt_ids must be a list of token-id lists or a [batch, time] array; wrap a single prompt in a "
                f"list. Received: an array of shape {array.shape}"
            )
        if padding_mask is None:
            rows = list(array)
        else:
            mask = np.asarray(padding_mask)
            if mask.shape != array.shape:
                raise ValueError(
                    f"padding_mask must have the shape of prompt_ids. Received: {mask.shape} vs {array.shape}"
                )
            rows = [row[keep.astype(bool)] for row, keep in zip(array, mask)]
    if not rows:
        raise ValueError("prompt_ids holds no prompts; pass at least one.")
    for row in rows:
        if row.size and not np.issubdtype(row.dtype, np.integer):
            raise ValueError(f"prompt_ids must hold integer token ids. Received dtype {row.dtype}")
    return [row.astype(np.int64) for row in rows]


def _seed_tensor(seed: int | None) -> tf.Tensor:
    if seed is None:
        # Unseeded calls draw from numpy's global generator, which `keras.utils.set_random_seed` also seeds.
        return tf.constant(np.random.randint(0, 2**31 - 1, size=2), tf.int32)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be an integer in [0, 2**62) or None. Received: seed={seed!r}")
    return tf.constant([int(seed) >> 31, int(seed) & (2**31 - 1)], tf.int32)


class _Batch:
    """Validated, left-padded inputs of one generation call."""

    def __init__(self, model, prompt_ids, max_new_tokens, seed, stop_token_ids, padding_mask):
        config = model.config
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1. Received: max_new_tokens={max_new_tokens!r}")
        self.max_new_tokens = int(max_new_tokens)
        rows = _prompt_rows(prompt_ids, padding_mask)
        for i, row in enumerate(rows):
            if row.size == 0:
                raise ValueError(
                    f"Prompt {i} is empty; generation conditions on at least one token, so start it with one "
                    "(e.g. a newline or an end-of-text token)."
                )
            if row.min() < 0 or row.max() >= config.vocab_size:
                bad = int(row[(row < 0) | (row >= config.vocab_size)][0])
                raise ValueError(
                    f"Prompt {i} holds token id {bad}, outside the model's vocabulary [0, {config.vocab_size})."
                )
            if row.size + self.max_new_tokens > config.block_size:
                raise ValueError(
                    f"Prompt {i} has {row.size} tokens and max_new_tokens={self.max_new_tokens}, "
                    f"{row.size + self.max_new_tokens} in all, beyond the model's context "
                    f"block_size={config.block_size}; shorten the prompt (keep its "
                    "last tokens) or ask for fewer new tokens."
                )
        stop_token_ids = [] if stop_token_ids is None else [int(t) for t in stop_token_ids]
        bad_stops = [t for t in stop_token_ids if not 0 <= t < config.vocab_size]
        if bad_stops:
            raise ValueError(f"stop_token_ids {bad_stops} are outside the model's vocabulary [0, {config.vocab_size}).")
        self.stop_token_ids = tf.constant(stop_token_ids, tf.int32, shape=[len(stop_token_ids)])
        self.seed = _seed_tensor(seed)

        longest = max(row.size for row in rows)
        bucket = max(_MIN_PROMPT_BUCKET, 1 << (longest - 1).bit_length())
        # Never pad past the context: the checks above guarantee longest <= block_size - max_new_tokens.
        self.prompt_length = min(bucket, config.block_size - self.max_new_tokens)
        prompt = np.zeros((len(rows), self.prompt_length), np.int32)
        for i, row in enumerate(rows):
            prompt[i, self.prompt_length - row.size :] = row
        self.prompt = tf.constant(prompt)  # (B, P)
        self.pad_lengths = tf.constant([self.prompt_length - row.size for row in rows], tf.int32)  # (B,)


def _trim(tokens: np.ndarray, stop_token_ids: set[int]) -> list[int]:
    """A row's new tokens up to and including its first stop token."""
    row = tokens.tolist()
    for i, token in enumerate(row):
        if token in stop_token_ids:
            return row[: i + 1]
    return row


def generate(model, prompt_ids, max_new_tokens: int = 100, sampler: str | Sampler = "greedy",
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_token_ids: Sequence[int] | None = None, padding_mask=None) -> list[list[int]]:
    """Continues each prompt by up to `max_new_tokens` tokens, with the KV cache, in one XLA-compiled loop.

    Prefills the prompts once, then runs one cached step per new token inside a single
    `tf.function(jit_compile=True)`. The compiled program is cached per (model, sampler settings, batch size,
    prompt-length bucket, max_new_tokens), so repeated calls do not retrace. A padded batch gives each row the
    same tokens as generating it alone: greedy rows always; random samplers key a row's noise by the seed,
    the step and the row's index in the batch, so row 0 (or any row with the same index) matches too.

    Args:
        model: a `TransformerLM`.
        prompt_ids: a list of token-id lists (ragged), or an int array `[batch, time]` (with `padding_mask` if
            padded, on either side).
        max_new_tokens: int >= 1, default 100. New tokens per row (fewer if it stops).
        sampler: "greedy" (default), "temperature", "top_k", "top_p", or a `Sampler`.
        temperature: float >= 0, default 1. 0 is greedy.
        top_k: int, for "top_k" (and optionally "top_p").
        top_p: float in (0, 1], for "top_p".
        seed: int in [0, 2**62) or None. The same seed gives the same tokens; None draws one from numpy's
            global generator.
        stop_token_ids: optional ints. A row ends at (and includes) the first one it emits; the loop exits
            once every row has stopped.
        padding_mask: optional `[batch, time]` array for an array `prompt_ids`, 1 for real tokens.

    Returns:
        A list with one list of new token ids per prompt row (the prompt not included): `max_new_tokens`
        long, or shorter when it ends with a stop token.

    Raises:
        ValueError: for an empty prompt, a token outside the vocabulary, a prompt plus `max_new_tokens` longer
            than `model.config.block_size` (this function never slides the window), or bad sampler settings.

    Example:
    >>> model = TransformerLM(LMConfig.preset("nano", vocab_size=65))
    >>> new = generate(model, [[1, 2, 3], [4]], max_new_tokens=5, sampler="top_p", top_p=0.9, seed=1)
    >>> [len(row) for row in new]
    [5, 5]
    """
    sampler = get_sampler(sampler, temperature, top_k, top_p)
    batch = _Batch(model, prompt_ids, max_new_tokens, seed, stop_token_ids, padding_mask)
    tokens, steps = _programs(model, sampler).run(
        batch.prompt, batch.pad_lengths, batch.seed, batch.stop_token_ids, batch.max_new_tokens
    )
    tokens = tokens.numpy()[:, : int(steps)]  # (B, steps)
    stops = set(batch.stop_token_ids.numpy().tolist())
    return [_trim(row, stops) for row in tokens]


def stream(model, prompt_ids, max_new_tokens: int = 100, sampler: str | Sampler = "greedy",
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop_token_ids: Sequence[int] | None = None, padding_mask=None,
           chunk_size: int = 8) -> Iterator[list[list[int]]]:
    """`generate`, yielding the new tokens `chunk_size` steps at a time as they are produced.

    The prefill and each chunk of cached steps are XLA-compiled programs; the cache and the token buffer are
    carried from one chunk to the next, so the concatenated chunks equal `generate`'s output for the same
    arguments (the step seeds do not depend on the chunking).

    Args:
        chunk_size: int >= 1, default 8. Decoding steps per yielded chunk: smaller shows text sooner, larger
            costs fewer host round trips.
        others: as `generate`.

    Returns:
        An iterator over chunks; checks the arguments at once (before the first chunk). Each chunk is a list
        with one list of token ids per prompt row: the tokens of this chunk. A row that has stopped
        yields empty lists afterwards; its stop token is the last token it yields.

    Raises:
        ValueError: as `generate`, or for `chunk_size` < 1.

    Example:
    >>> for chunk in stream(model, [[1, 2, 3]], max_new_tokens=16, chunk_size=4):  # doctest: +SKIP
    ...     print(tokenizer.decode(chunk[0]), end="", flush=True)
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1. Received: chunk_size={chunk_size!r}")
    sampler = get_sampler(sampler, temperature, top_k, top_p)
    batch = _Batch(model, prompt_ids, max_new_tokens, seed, stop_token_ids, padding_mask)
    return _chunks(_programs(model, sampler), batch, chunk_size)


def _chunks(programs: _Programs, batch: _Batch, chunk_size: int) -> Iterator[list[list[int]]]:
    """`stream`'s generator, apart so that `stream` checks its arguments when called, not at the first chunk."""
    tokens, cache, cache_mask = programs.start(batch.prompt, batch.pad_lengths, batch.max_new_tokens)
    index, end = batch.prompt_length, batch.prompt_length + batch.max_new_tokens
    done = tf.zeros([len(batch.pad_lengths)], tf.bool)
    stops = set(batch.stop_token_ids.numpy().tolist())
    stopped = np.zeros(len(batch.pad_lengths), bool)
    while index < end and not stopped.all():
        chunk_end = min(index + chunk_size, end)
        # Python ints become tensors here, so every chunk reuses one compiled program.
        tokens, cache, new_index, done = programs.advance(
            tokens, cache, cache_mask, batch.pad_lengths, tf.constant(index), tf.constant(chunk_end), done,
            batch.seed, batch.stop_token_ids, tf.constant(batch.prompt_length),
        )
        new_index = int(new_index)
        chunk = []
        for row, row_stopped in zip(tokens.numpy()[:, index:new_index], stopped):
            chunk.append([] if row_stopped else _trim(row, stops))
        stopped = done.numpy()
        index = new_index
        yield chunk
