"""`generate` and `stream`: prompt ids in, new token ids out, decoded with the KV cache in one compiled loop.

How a batch is laid out: the prompts are left-padded to a common length P (bucketed to a power of two, so
nearby lengths share one compiled program) and followed by room for the N new tokens, in one `[B, P + N]`
token buffer; the model's KV cache is preallocated to P + N slots (at most `block_size`). Padded slots are
masked out of attention and each real token gets position "number of real tokens before it", so a row of a
padded batch sees exactly what it would see alone. The prompt (but its last token) is prefilled in one call;
then every loop step feeds one token, writes its keys/values into the cache and samples the next one.

Context policy, for a prompt plus `max_new_tokens` longer than the model's `block_size`:
- "slide" (the default): a prompt longer than the context starts from its last `block_size` tokens; when a
  row's context is full, it keeps its newest `slide_keep(block_size)` tokens (half the window, rounded up) and
  the step recomputes the window in one cached pass: positions are learned and absolute, so the kept tokens'
  keys and values change with their positions. The output is that of a loop that recomputes the whole context
  for every token and crops it the same way (before the first slide: nanoGPT's "last block_size tokens"); a
  row slides when its own context is full, so a padded batch still gives each row what it gets alone.
- "refuse": a ValueError naming the prompt and the fix.
An empty prompt is refused either way: the model has no "start" token to condition on, so pass at least one
token (e.g. a newline).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tf_lm.generation import speculative
from tf_lm.generation.samplers import Sampler, get_sampler
from tf_lm.generation.speculative import DRAFTERS, ModelDrafter, PromptLookupDrafter, SpeculationStats
from tf_lm.model import cache_slots

# Smallest prompt bucket: shorter prompts share one program instead of compiling one per length.
_MIN_PROMPT_BUCKET = 8

CONTEXT_POLICIES = ("slide", "refuse")

# Seeds are two int32 halves of 31 bits each: [0, 2**62) is what they carry.
SEED_LIMIT = 2**62

# `num_speculative_tokens`' default (of `generate`, `stream` and the export): the only value it may have without a
# drafter.
DEFAULT_NUM_SPECULATIVE_TOKENS = 4


def max_new_tokens_limit(block_size: int) -> int:
    """The most new tokens one request may ask for: decoding indexes its token buffer (the prompt, at most
    `block_size` tokens when it slides, then the new tokens) with int32, and the sliding window reads up to
    `block_size` columns past the buffer's last one."""
    return 2**31 - 1 - 2 * block_size


def _dim(tensor, axis):
    """The static size of `axis` when known (XLA wants constants for shapes), else a dynamic scalar."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _in_context(state, columns):
    """Whether each buffer column of `columns` `[T]` is in each row's context: bool `[batch, T]`."""
    return columns[None, :] >= state["starts"][:, None]


def _positions(state, columns, block_size):
    """The position of each of `columns` `[T]` in each row's context (0 for columns before it): int32 `[batch, T]`."""
    return tf.clip_by_value(columns[None, :] - state["starts"][:, None], 0, block_size - 1)


def prefill(model, prompt, pad_lengths, max_new_tokens):
    """Lays out the token buffer and runs the prompt (but its last token) through the model's cache.

    Works with static shapes (the XLA path) and dynamic ones (the exported SavedModel) alike.

    Args:
        model: a `TransformerLM`.
        prompt: int32 `[batch, P]`, left-padded prompts, `P <= block_size`.
        pad_lengths: int32 `[batch]`, number of padding slots at the start of each row.
        max_new_tokens: int or int32 scalar, N.

    Returns:
        `(tokens [batch, P + N], state)`: the buffer with the prompt in place, and the decoding state that
        `next_fn` threads through the loop: `cache`, the KV cache of `min(P + N, block_size)` slots holding the
        prompt's first P - 1 columns; `base`, the buffer column that cache slot 0 holds (0 until the window
        slides); `starts`, int32 `[batch]`, the first buffer column of each row's context (its first real token
        until the window slides).
    """
    batch, prompt_length = _dim(prompt, 0), _dim(prompt, 1)
    total = prompt_length + max_new_tokens
    tokens = tf.pad(prompt, [[0, 0], [0, max_new_tokens]])  # (B, P + N)
    block_size = model.config.block_size
    slots = min(total, block_size) if isinstance(total, int) else tf.minimum(total, block_size)
    state = {"cache": model.init_cache(batch, slots), "base": tf.constant(0), "starts": pad_lengths}
    # The last prompt token is left for the loop's first step, which returns the first new token's logits.
    columns = tf.range(prompt_length - 1)
    _, state["cache"] = model.call_with_cache(
        prompt[:, :-1], state["cache"], 0, padding_mask=_in_context(state, tf.range(slots)),
        position_ids=_positions(state, columns, block_size),
    )
    return tokens, state


def slide_keep(block_size: int) -> int:
    """How many of its newest tokens a full context keeps when the window slides: half of it, rounded up."""
    return (block_size + 1) // 2


def next_fn(model, slide: bool):
    """The sampler's `next(tokens, state, index)`: feeds token `index - 1`, returns the logits of token `index`.

    Each row's context is the buffer columns `[starts[row], index)`. With `slide`, a row whose context would pass
    `block_size` tokens keeps only its newest `slide_keep(block_size)`; the cache then no longer fits the learned
    absolute positions, so that step recomputes the window (every row's context, at its new positions) in one
    pass instead of feeding one token. The recompute comes once every ~block_size / 2 steps, so its cost is
    amortised; without `slide` (the whole generation fits the context) the loop has no such branch.
    """
    block_size = model.config.block_size
    keep = slide_keep(block_size)

    def step(tokens, state, index):
        # A gather, not `tokens[:, index - 1 : index]`: XLA cannot tell that slice's size is 1 from a dynamic
        # index, and silently treats it as a dynamically-sized slice.
        token = tf.gather(tokens, index - 1, axis=1)[:, None]  # (B, 1)
        slot_columns = state["base"] + tf.range(cache_slots(state["cache"]))  # (S,)
        logits, cache = model.call_with_cache(
            token, state["cache"], index - 1 - state["base"], padding_mask=_in_context(state, slot_columns),
            position_ids=(index - 1 - state["starts"])[:, None],
        )  # (B, 1, V)
        return logits[:, 0], {**state, "cache": cache}

    def recompute(tokens, state, index):
        starts = tf.where(index - state["starts"] > block_size, index - keep, state["starts"])  # (B,)
        # Cache slot 0 now holds the oldest column any row still needs; the pass covers block_size columns
        # from there, and those past `index - 1` (clamped into the buffer) are written now and overwritten
        # by the steps that reach them, never attended before.
        new_state = {"base": tf.reduce_min(starts), "starts": starts}
        columns = new_state["base"] + tf.range(block_size)  # (W,)
        window = tf.gather(tokens, tf.minimum(columns, _dim(tokens, 1) - 1), axis=1)  # (B, W)
        logits, cache = model.call_with_cache(
            window, tf.nest.map_structure(tf.zeros_like, state["cache"]), 0,
            padding_mask=_in_context(new_state, columns), position_ids=_positions(new_state, columns, block_size),
        )  # (B, W, V)
        return tf.gather(logits, index - 1 - new_state["base"], axis=1), {**new_state, "cache": cache}

    def next(tokens, state, index):
        if not slide:
            return step(tokens, state, index)
        full = tf.logical_or(
            tf.reduce_any(index - state["starts"] > block_size),  # a row's context would pass block_size
            index - 1 - state["base"] >= cache_slots(state["cache"]),  # the token's slot is past the cache
        )
        return tf.cond(full, lambda: recompute(tokens, state, index), lambda: step(tokens, state, index))

    return next


class _Programs:
    """The compiled programs of one (model, sampler): the whole decode, and its start/advance halves for streaming.

    TensorFlow traces (and XLA compiles) each one per input shape, so a call with a batch size, prompt bucket
    and `max_new_tokens` seen before reuses its program.
    """

    def __init__(self, model, sampler: Sampler):
        # A weak reference: the programs are cached per model, and must not keep the model alive themselves.
        model_ref = weakref.ref(model)

        def slides(model, buffer_length):
            # Static: a generation that fits the context never slides, and its loop has no recompute branch.
            return buffer_length > model.config.block_size

        @tf.function(jit_compile=True)
        def run(prompt, pad_lengths, seed, stop_token_ids, max_new_tokens):
            model = model_ref()
            prompt_length = prompt.shape[1]
            tokens, state = prefill(model, prompt, pad_lengths, max_new_tokens)
            tokens, _, index, _ = sampler(
                next_fn(model, slides(model, tokens.shape[1])), tokens, state, prompt_length,
                prompt_length + max_new_tokens, seed, stop_token_ids, prompt_length=prompt_length,
            )
            return tokens[:, prompt_length:], index - prompt_length  # (B, N), steps run

        @tf.function(jit_compile=True)
        def start(prompt, pad_lengths, max_new_tokens):
            return prefill(model_ref(), prompt, pad_lengths, max_new_tokens)

        @tf.function(jit_compile=True)
        def advance(tokens, state, index, end_index, done, seed, stop_token_ids, prompt_length):
            model = model_ref()
            return sampler(
                next_fn(model, slides(model, tokens.shape[1])), tokens, state, index, end_index, seed,
                stop_token_ids, done, prompt_length,
            )

        self.run, self.start, self.advance = run, start, advance


class _SpeculativePrograms:
    """The compiled programs of one (model, sampler, drafter): `_Programs`' three, with speculative rounds."""

    def __init__(self, model, sampler: Sampler, drafter):
        model_ref = weakref.ref(model)
        self.drafter = drafter

        @tf.function(jit_compile=True)
        def run(prompt, pad_lengths, seed, stop_token_ids, max_new_tokens):
            model = model_ref()
            prompt_length = prompt.shape[1]
            state = speculative.prefill(model, drafter, prompt, pad_lengths, max_new_tokens, drafter.k)
            end = tf.constant(prompt_length + max_new_tokens)
            state = speculative.rounds(model, drafter, sampler, state, pad_lengths, end, end, seed, stop_token_ids,
                                       prompt_length)
            return state["tokens"][:, prompt_length:], state["index"] - prompt_length  # (B, N + k + 1), (B,)

        @tf.function(jit_compile=True)
        def start(prompt, pad_lengths, max_new_tokens):
            return speculative.prefill(model_ref(), drafter, prompt, pad_lengths, max_new_tokens, drafter.k)

        @tf.function(jit_compile=True)
        def advance(state, pad_lengths, end_index, final_index, seed, stop_token_ids, prompt_length):
            return speculative.rounds(model_ref(), drafter, sampler, state, pad_lengths, end_index, final_index, seed,
                                      stop_token_ids, prompt_length)

        self.run, self.start, self.advance = run, start, advance


_PROGRAMS: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def _variables(*models) -> tuple:
    # A traced program keeps running the layers and variables its models had then: after `enable_lora` (factors
    # added) or a merge (factors dropped) it would silently ignore the change. The variables tell the versions
    # apart; the models keep them alive, so their ids are not reused while both are compared.
    return tuple(id(variable) for model in models for variable in model.weights)


def _programs(model, sampler: Sampler, drafter=None) -> _Programs | _SpeculativePrograms:
    # Equal settings share one compiled program. A class that defines get_config states all of its settings, and so
    # does an inherited one that names every attribute of the instance (RandomSampler's temperature); a subclass
    # with an attribute its config does not name is told apart by identity (the program keeps it alive, so its id
    # is not reused while cached).
    config = sampler.get_config()
    described = "get_config" in vars(type(sampler)) or set(vars(sampler)) <= set(config)
    settings = tuple(sorted(config.items())) if described else id(sampler)
    key = (type(sampler), settings, drafter and drafter.key)
    draft_model = drafter.draft_ref() if isinstance(drafter, ModelDrafter) else None
    variables = _variables(model) if draft_model is None else _variables(model, draft_model)
    per_model = _PROGRAMS.setdefault(model, {})
    cached = per_model.get(key)
    # A draft model's key holds its id, which a new model may reuse once the old one is gone.
    if (cached is None or cached.variables != variables
            or (draft_model is not None and cached.drafter.draft_ref() is not draft_model)):
        cached = _Programs(model, sampler) if drafter is None else _SpeculativePrograms(model, sampler, drafter)
        cached.variables = variables
        per_model[key] = cached
    return cached


def _drafter(model, draft_model, drafter: str | None, num_speculative_tokens: int | None, sampler: Sampler):
    """Checks the speculative-decoding arguments (the sampler's too); returns the drafter they ask for, or None.

    Without a drafter, `num_speculative_tokens` must be None, as `get_sampler` refuses the settings a sampler would
    ignore: a k set for plain decoding, even the default one, would be ignored without a word.
    """
    if drafter is None and draft_model is None:
        if num_speculative_tokens is not None:
            raise ValueError(
                "`num_speculative_tokens` only applies to speculative decoding, with a `draft_model` or a `drafter`; "
                f"pass one, or drop it. Received: `num_speculative_tokens={num_speculative_tokens!r}`"
            )
        return None
    speculative.check_sampler(sampler)
    k = DEFAULT_NUM_SPECULATIVE_TOKENS if num_speculative_tokens is None else num_speculative_tokens
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(
            f"`num_speculative_tokens` must be an integer >= 1. Received: `num_speculative_tokens={k!r}`"
        )
    if drafter not in (None, *DRAFTERS):
        raise ValueError(f"`drafter` must be one of {list(DRAFTERS)} or None. Received: `drafter={drafter!r}`")
    if drafter == "prompt_lookup":
        if draft_model is not None:
            raise ValueError("`drafter='prompt_lookup'` drafts from the context and takes no `draft_model`; pass one "
                             "or the other.")
        return PromptLookupDrafter(int(k), model.config.vocab_size)
    if draft_model is None:
        raise ValueError("`drafter='model'` needs a `draft_model`, a smaller model with the same vocabulary.")
    config, draft_config = model.config, draft_model.config
    if draft_config.vocab_size != config.vocab_size:
        raise ValueError(
            f"The draft model's vocabulary must be the model's: draft vocab_size={draft_config.vocab_size}, model "
            f"vocab_size={config.vocab_size}; train the draft with the model's tokenizer."
        )
    if draft_config.block_size < config.block_size:
        raise ValueError(
            f"The draft model's context must be at least the model's: draft block_size={draft_config.block_size}, "
            f"model block_size={config.block_size}."
        )
    return ModelDrafter(draft_model, int(k))


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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"`seed` must be an integer in [0, 2**62) or None. Received: `seed={seed!r}`")
    return tf.constant([int(seed) >> 31, int(seed) & (2**31 - 1)], tf.int32)


class _Batch:
    """Validated, left-padded inputs of one generation call."""

    def __init__(self, model, prompt_ids, max_new_tokens, seed, stop_token_ids, padding_mask, context_policy,
                 drafter=None):
        config = model.config
        if context_policy not in CONTEXT_POLICIES:
            raise ValueError(
                f"`context_policy` must be one of {list(CONTEXT_POLICIES)}. "
                f"Received: `context_policy={context_policy!r}`"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(
                f"`max_new_tokens` must be an integer >= 1. Received: `max_new_tokens={max_new_tokens!r}`"
            )
        limit = max_new_tokens_limit(config.block_size)
        if max_new_tokens > limit:
            raise ValueError(
                f"`max_new_tokens` must be at most {limit} for a model with block_size={config.block_size}: decoding "
                f"indexes the prompt, the new tokens and a window past them with int32. "
                f"Received: `max_new_tokens={max_new_tokens!r}`"
            )
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
            if context_policy == "refuse" and row.size + self.max_new_tokens > config.block_size:
                raise ValueError(
                    f"Prompt {i} has {row.size} tokens and `max_new_tokens={self.max_new_tokens}`, "
                    f"{row.size + self.max_new_tokens} in all, beyond the model's context "
                    f"block_size={config.block_size}; shorten the prompt (keep its last tokens), ask for fewer new "
                    "tokens, or pass `context_policy='slide'`."
                )
        stop_token_ids = [] if stop_token_ids is None else [int(t) for t in stop_token_ids]
        bad_stops = [t for t in stop_token_ids if not 0 <= t < config.vocab_size]
        if bad_stops:
            raise ValueError(f"stop_token_ids {bad_stops} are outside the model's vocabulary [0, {config.vocab_size}).")
        self.stop_token_ids = tf.constant(stop_token_ids, tf.int32, shape=[len(stop_token_ids)])
        self.seed = _seed_tensor(seed)

        # The model sees at most block_size tokens, so a longer prompt starts from its last block_size tokens.
        rows = [row[-config.block_size :] for row in rows]
        longest = max(row.size for row in rows)
        bucket = max(_MIN_PROMPT_BUCKET, 1 << (longest - 1).bit_length())
        # Speculative rounds may run k positions past the last new token, and never slide; the draft's first call
        # of a round needs two prompt columns.
        spare = config.block_size - self.max_new_tokens - (drafter.k if drafter else 0)
        self.drafter = drafter if drafter and spare >= max(longest, 2) else None
        if self.drafter:
            self.prompt_length = min(bucket, spare)
        elif longest + self.max_new_tokens <= config.block_size:
            # Padding never makes a generation that fits the context slide.
            self.prompt_length = min(bucket, config.block_size - self.max_new_tokens)
        else:
            self.prompt_length = min(bucket, config.block_size)
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
             stop_token_ids: Sequence[int] | None = None, padding_mask=None, context_policy: str = "slide",
             draft_model=None, num_speculative_tokens: int | None = None,
             drafter: str | None = None) -> list[list[int]]:
    """Continues each prompt by up to `max_new_tokens` tokens, with the KV cache, in one XLA-compiled loop.

    Prefills the prompts once, then runs one cached step per new token (and, past the context, one window
    recompute every ~block_size / 2 tokens: see the module docstring) inside a single
    `tf.function(jit_compile=True)`. The compiled program is cached per (model, sampler settings, batch size,
    prompt-length bucket, max_new_tokens), so repeated calls do not retrace. A padded batch gives each row the
    same tokens as generating it alone: greedy rows always; random samplers key a row's noise by the seed,
    the step and the row's index in the batch, so row 0 (or any row with the same index) matches too.

    Args:
        model: a `TransformerLM`.
        prompt_ids: a list of token-id lists (ragged), or an int array `[batch, time]` (with `padding_mask` if
            padded, on either side).
        max_new_tokens: int >= 1, default 100. New tokens per row (fewer if it stops); at most
            `max_new_tokens_limit(block_size)`, 2**31 - 1 - 2 * block_size.
        sampler: "greedy" (default), "temperature", "top_k", "top_p", or a `Sampler`.
        temperature: float >= 0, default 1. 0 is greedy.
        top_k: int, for "top_k" (and optionally "top_p").
        top_p: float in (0, 1], for "top_p".
        seed: int in [0, 2**62) or None. The same seed gives the same tokens; None draws one from numpy's
            global generator.
        stop_token_ids: optional ints. A row ends at (and includes) the first one it emits; the loop exits
            once every row has stopped.
        padding_mask: optional `[batch, time]` array for an array `prompt_ids`, 1 for real tokens.
        context_policy: "slide" (default) or "refuse": what a prompt plus `max_new_tokens` longer than
            `model.config.block_size` gets, a sliding window or a ValueError.
        draft_model: optional `TransformerLM` with the model's vocabulary and at least its context: speculative
            decoding (`tf_lm.generation.speculative`). Greedy output is unchanged; sampled output has the same
            distribution (not the same tokens for a seed as without a draft). A request that does not fit the
            context with `num_speculative_tokens` spare positions decodes without drafts (speculation never
            slides).
        num_speculative_tokens: int >= 1 or None (default: 4 with a drafter). Tokens drafted per round; only with
            a drafter (a value without one is refused rather than ignored).
        drafter: None, "model" (the default with `draft_model`) or "prompt_lookup" (drafts the tokens that followed
            the last n-gram's latest earlier occurrence; no draft model).

    Returns:
        A list with one list of new token ids per prompt row (the prompt not included): `max_new_tokens`
        long, or shorter when it ends with a stop token.

    Raises:
        ValueError: for an empty prompt, a token outside the vocabulary, a `max_new_tokens` past its limit, a
            prompt plus `max_new_tokens` longer than `model.config.block_size` with `context_policy="refuse"`, bad
            sampler settings, a draft model with another vocabulary or a shorter context, a drafter with a
            sampler whose distribution speculation cannot know (`speculative.check_sampler`), or a
            `num_speculative_tokens` without a drafter.

    Example:
    >>> model = TransformerLM(LMConfig.preset("nano", vocab_size=65))
    >>> new = generate(model, [[1, 2, 3], [4]], max_new_tokens=5, sampler="top_p", top_p=0.9, seed=1)
    >>> [len(row) for row in new]
    [5, 5]
    """
    sampler = get_sampler(sampler, temperature, top_k, top_p)
    batch = _Batch(model, prompt_ids, max_new_tokens, seed, stop_token_ids, padding_mask, context_policy,
                   _drafter(model, draft_model, drafter, num_speculative_tokens, sampler))
    programs = _programs(model, sampler, batch.drafter)
    stops = set(batch.stop_token_ids.numpy().tolist())
    tokens, steps = programs.run(batch.prompt, batch.pad_lengths, batch.seed, batch.stop_token_ids,
                                 batch.max_new_tokens)
    # Plain decoding runs one number of steps for the batch; speculative rows each their own.
    lengths = np.broadcast_to(steps.numpy(), [len(tokens)])
    return [_trim(row[:length], stops) for row, length in zip(tokens.numpy(), lengths)]


def stream(model, prompt_ids, max_new_tokens: int = 100, sampler: str | Sampler = "greedy",
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop_token_ids: Sequence[int] | None = None, padding_mask=None, context_policy: str = "slide",
           draft_model=None, num_speculative_tokens: int | None = None, drafter: str | None = None,
           chunk_size: int = 8) -> Stream:
    """`generate`, yielding the new tokens `chunk_size` steps at a time as they are produced.

    The prefill and each chunk of cached steps are XLA-compiled programs; the cache and the token buffer are
    carried from one chunk to the next, so the concatenated chunks equal `generate`'s output for the same
    arguments (the step seeds do not depend on the chunking).

    Args:
        chunk_size: int >= 1, default 8. Decoding steps per yielded chunk: smaller shows text sooner, larger
            costs fewer host round trips.
        others: as `generate`.

    Returns:
        A `Stream`, an iterator over chunks; checks the arguments at once (before the first chunk). Each chunk is
        a list with one list of token ids per prompt row: the tokens of this chunk (with speculative decoding,
        rows may yield different numbers of tokens per chunk, up to k more than `chunk_size`). A row that has
        stopped yields empty lists afterwards; its stop token is the last token it yields. `Stream.speculation`
        counts the model passes, the tokens output and the accepted drafts among them.

    Raises:
        ValueError: as `generate`, or for `chunk_size` < 1.

    Example:
    >>> for chunk in stream(model, [[1, 2, 3]], max_new_tokens=16, chunk_size=4):  # doctest: +SKIP
    ...     print(tokenizer.decode(chunk[0]), end="", flush=True)
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1. Received: `chunk_size={chunk_size!r}`")
    sampler = get_sampler(sampler, temperature, top_k, top_p)
    batch = _Batch(model, prompt_ids, max_new_tokens, seed, stop_token_ids, padding_mask, context_policy,
                   _drafter(model, draft_model, drafter, num_speculative_tokens, sampler))
    return Stream(_programs(model, sampler, batch.drafter), batch, chunk_size)


class Stream:
    """The iterator `stream` returns: chunks of new tokens as they are decoded.

    Attributes:
        speculation: `SpeculationStats` so far (passes, tokens output, drafts accepted), or None without speculation (no
            drafter, or a request that does not fit the context with k spare positions).
    """

    def __init__(self, programs, batch: _Batch, chunk_size: int):
        self.speculation = None if batch.drafter is None else SpeculationStats(0, 0, 0, batch.drafter.k)
        chunks = _chunks if batch.drafter is None else self._speculative_chunks
        self._chunks = chunks(programs, batch, chunk_size)

    def __iter__(self):
        return self

    def __next__(self) -> list[list[int]]:
        return next(self._chunks)

    def _speculative_chunks(self, programs: _SpeculativePrograms, batch: _Batch, chunk_size: int):
        state = programs.start(batch.prompt, batch.pad_lengths, batch.max_new_tokens)
        start, end = batch.prompt_length, batch.prompt_length + batch.max_new_tokens
        stops = set(batch.stop_token_ids.numpy().tolist())
        index = np.full(len(batch.pad_lengths), start)
        chunk_end = start
        while chunk_end < end:
            chunk_end = min(chunk_end + chunk_size, end)
            state = programs.advance(state, batch.pad_lengths, tf.constant(chunk_end), tf.constant(end), batch.seed,
                                     batch.stop_token_ids, tf.constant(batch.prompt_length))
            tokens, new_index, done = state["tokens"].numpy(), state["index"].numpy(), state["done"].numpy()
            self.speculation = SpeculationStats(int(state["rounds"].numpy().sum()),
                                                int(state["accepted"].numpy().sum()), int((new_index - start).sum()),
                                                batch.drafter.k)
            # A row's stop token ends its tokens, so trimming each chunk keeps nothing after it.
            yield [_trim(row[begin:stop], stops) for row, begin, stop in zip(tokens, index, new_index)]
            index = new_index
            if done.all():
                return


def _chunks(programs: _Programs, batch: _Batch, chunk_size: int) -> Iterator[list[list[int]]]:
    """`stream`'s generator for plain decoding, apart so that `stream` checks its arguments when called."""
    tokens, state = programs.start(batch.prompt, batch.pad_lengths, batch.max_new_tokens)
    index, end = batch.prompt_length, batch.prompt_length + batch.max_new_tokens
    done = tf.zeros([len(batch.pad_lengths)], tf.bool)
    stops = set(batch.stop_token_ids.numpy().tolist())
    stopped = np.zeros(len(batch.pad_lengths), bool)
    while index < end and not stopped.all():
        chunk_end = min(index + chunk_size, end)
        # Python ints become tensors here, so every chunk reuses one compiled program.
        tokens, state, new_index, done = programs.advance(
            tokens, state, tf.constant(index), tf.constant(chunk_end), done, batch.seed, batch.stop_token_ids,
            tf.constant(batch.prompt_length),
        )
        new_index = int(new_index)
        chunk = []
        for row, row_stopped in zip(tokens.numpy()[:, index:new_index], stopped):
            chunk.append([] if row_stopped else _trim(row, stops))
        stopped = done.numpy()
        index = new_index
        yield chunk
