"""Samplers: turn next-token logits into tokens, one cached step at a time, inside one compiled loop.

A sampler knows nothing about the model. It gets a `next(tokens, cache, index)` closure that returns the
logits of token `index` (and the updated cache), and it fills a fixed-shape token buffer slot by slot in a
`tf.while_loop`, so the whole decode compiles to one XLA loop. Subclasses only choose the token: the base class
draws from softmax(`filter_logits(logits)`), so a sampler that keeps or reweights tokens overrides `filter_logits`
(and works with speculative decoding too); one with another rule overrides `get_next_token(logits, seed)` (see
`Sampler` for what speculative decoding then also needs).

Randomness is stateless: the step that fills buffer slot `index` draws with
`fold_in(seed, index - prompt_length)`, i.e. keyed by the new token's number, so the same seed always gives the
same tokens, in eager, `tf.function`, XLA and the exported SavedModel alike. Random samplers use the Gumbel-max
trick (argmax of logits plus Gumbel noise is a sample of softmax(logits)) with noise hashed
from (seed, row, token id), so a row's draw depends on the seed, the step and its row index in the batch,
never on the other rows or on how far the prompts were padded.
"""

from __future__ import annotations

import tensorflow as tf

# Finite rather than -inf: a filtered-out logit plus Gumbel noise must stay below every kept one, never NaN.
_FILTERED_LOGIT = -1e30
# The smallest positive float32 that is not subnormal: the least a temperature divides by (`Sampler.filter_logits`).
_SMALLEST_NORMAL_FLOAT32 = 2.0**-126
# The largest float32: a temperature beyond it is inf once cast, and a filtered logit divided by it NaN.
_LARGEST_FLOAT32 = (2 - 2.0**-23) * 2.0**127


class Sampler:
    """Base class: the decoding loop, and a draw from softmax(`filter_logits(logits)`).

    A subclass changes what is drawn in one of two ways:
    - override `filter_logits` (e.g. set the logits of tokens it never emits very negative): plain decoding
      (`get_next_token`) and speculative decoding (`probabilities` and `sample`) both follow it;
    - override `get_next_token(logits, seed)`, for a rule that is not a softmax of logits. Plain decoding uses it;
      speculative decoding draws through `probabilities` and `sample` instead, so such a sampler speculates only if
      the class that overrides `get_next_token` (or a subclass) also overrides `probabilities` to return the
      distribution `get_next_token` draws from (and `sample`, unless Gumbel-max over those probabilities is how it
      draws). Otherwise speculative decoding refuses it (`speculative.check_sampler`) rather than draw from another
      distribution.

    Args:
        temperature: float > 0, default 1. Logits are divided by it before sampling; below 1 sharpens (a tiny
            one, 1e-45 say, draws the argmax as greedy decoding does), above 1 flattens. (Greedy decoding is
            `GreedySampler`; `get_sampler` maps temperature 0 to it.)

    Call args:
        next: callable `(tokens, cache, index) -> (logits [batch, vocab] float32, cache)`: the logits of
            the token at buffer slot `index` given `tokens[:, :index]`.
        tokens: int32 tensor `[batch, length]`, the token buffer; slots `>= index` are filled.
        cache: any nest of tensors `next` threads through (the model's KV cache).
        index: int scalar, the first slot to fill.
        end_index: int scalar, one past the last slot to fill (`<= length`).
        seed: int32 tensor `[2]`; required by random samplers, ignored by greedy.
        stop_token_ids: optional int32 tensor `[num_stop]`. A row that emits one stops; its later slots get 0.
        done: optional bool tensor `[batch]`, rows that already stopped (to resume a chunked decode).
        prompt_length: int scalar, default 0. Slots before it hold the prompt; the step filling slot `index`
            draws with `fold_in(seed, index - prompt_length)`.

    Returns:
        `(tokens, cache, index, done)`: the filled buffer, the cache, the slot after the last one filled
        (less than `end_index` when every row stopped early) and the per-row stop flags.

    Example:
    >>> def next(tokens, cache, index):
    ...     return tf.one_hot(tf.fill([2], 3), 8) * 1e9, cache
    >>> tokens, _, index, _ = GreedySampler()(next, tf.zeros([2, 6], "int32"), (), 2, 6)
    >>> tokens.numpy()[0].tolist(), int(index)
    ([0, 0, 3, 3, 3, 3], 6)
    """

    def __init__(self, temperature: float = 1.0):
        if not 0 < temperature <= _LARGEST_FLOAT32:
            raise ValueError(
                f"`temperature` must be > 0 and a finite float32; use GreedySampler (or temperature=0 in "
                f"get_sampler) for greedy decoding. Received: `temperature={temperature}`"
            )
        self.temperature = float(temperature)

    def get_next_token(self, logits, seed):
        """Returns int32 tokens `[batch]` drawn from float32 `logits` `[batch, vocab]` with the `[2]` seed: a sample
        of softmax(`filter_logits(logits)`)."""
        return _gumbel_argmax(self.filter_logits(logits), seed)

    def filter_logits(self, logits):
        """Returns `logits` / temperature (shifted by a constant per row below temperature 1) with every token this
        sampler must never emit set very negative.

        Below temperature 1 the division enlarges the logits, so each row's largest is subtracted first (softmax does
        not change): it stays 0 and the others can only fall, to -inf at worst. A tiny temperature then draws the
        argmax, its limit, instead of overflowing to inf - inf = NaN or sinking the kept logits below the filtered-out
        ones (`_FILTERED_LOGIT`). A temperature under float32's smallest normal number divides as that number: the CPU
        flushes a subnormal divisor to 0, and 0 / 0 is NaN. At 1 and above the logits are divided as they are, since
        they only shrink.
        """
        if self.temperature >= 1.0:
            return logits / self.temperature
        shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
        return shifted / max(self.temperature, _SMALLEST_NORMAL_FLOAT32)

    def probabilities(self, logits):
        """The distribution this sampler draws from: float32 `[..., vocab]` from logits `[..., vocab]`.

        Speculative decoding's rejection rule compares the model's and the draft's distributions through it, and
        draws its tokens from them with `sample`: a subclass whose `get_next_token` draws from anything but
        softmax(`filter_logits`) overrides it beside `get_next_token`.
        """
        flat = tf.reshape(tf.cast(logits, tf.float32), [-1, logits.shape[-1]])  # (N, V)
        return tf.reshape(tf.nn.softmax(self.filter_logits(flat)), tf.shape(logits))

    def sample(self, probabilities, noise):
        """A token from each distribution of `probabilities` `[..., vocab]`, by Gumbel-max with uniform `noise`
        of the same shape: int32 `[...]`."""
        log_probs = tf.where(probabilities > 0, tf.math.log(probabilities), _FILTERED_LOGIT)
        return tf.argmax(log_probs - tf.math.log(-tf.math.log(noise)), axis=-1, output_type=tf.int32)

    def __call__(self, next, tokens, cache, index, end_index, seed=None, stop_token_ids=None, done=None,
                 prompt_length=0):
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        batch = tf.shape(tokens)[0]
        seed = tf.zeros([2], tf.int32) if seed is None else tf.convert_to_tensor(seed, tf.int32)
        stop_token_ids = tf.zeros([0], tf.int32) if stop_token_ids is None else tf.cast(stop_token_ids, tf.int32)
        done = tf.zeros([batch], tf.bool) if done is None else tf.convert_to_tensor(done, tf.bool)
        index = tf.convert_to_tensor(index, tf.int32)
        end_index = tf.convert_to_tensor(end_index, tf.int32)
        prompt_length = tf.convert_to_tensor(prompt_length, tf.int32)

        def cond(index, tokens, cache, done):
            return tf.logical_and(index < end_index, tf.logical_not(tf.reduce_all(done)))

        def body(index, tokens, cache, done):
            logits, cache = next(tokens, cache, index)  # (B, V)
            step_seed = fold_in(seed, index - prompt_length)
            token = self.get_next_token(tf.cast(logits, tf.float32), step_seed)  # (B,)
            token = tf.where(done, tf.zeros_like(token), token)
            tokens = tf.tensor_scatter_nd_update(
                tokens, tf.stack([tf.range(batch), tf.fill([batch], index)], axis=1), token
            )  # (B, length)
            is_stop = tf.reduce_any(token[:, None] == stop_token_ids[None, :], axis=1)  # (B,)
            return index + 1, tokens, cache, tf.logical_or(done, is_stop)

        index, tokens, cache, done = tf.while_loop(cond, body, (index, tokens, cache, done))
        return tokens, cache, index, done

    def get_config(self) -> dict:
        """The sampler's settings; two samplers of one class with equal configs draw identical tokens, so they share
        one compiled decoding program. A subclass with settings of its own overrides it; one that keeps an attribute
        its config does not name gets a program per instance."""
        return {"temperature": self.temperature}


def _mix32(x):
    """murmur3's 32-bit finaliser: a bijection on uint32 that spreads every input bit over the output."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x85EBCA6B, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 13))
    x = x * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _fold(seed, data):
    """`fold_in`'s two uint32 halves for every element of the int32 tensor `data`."""
    key = tf.bitcast(tf.convert_to_tensor(seed, tf.int32), tf.uint32)  # (2,)
    data = tf.bitcast(tf.convert_to_tensor(data, tf.int32), tf.uint32)
    first = _mix32(_mix32(tf.bitwise.bitwise_xor(data, key[0])) + key[1])
    second = _mix32(tf.bitwise.bitwise_xor(first, key[1]) + tf.constant(0x9E3779B9, tf.uint32))
    return first, second


def _bits(counter, first, second):
    """32 random bits per element of the uint32 `counter` under the key `(first, second)` (broadcast)."""
    return _mix32(_mix32(tf.bitwise.bitwise_xor(counter, first)) + second)


def _to_unit(bits):
    # The top 24 bits, centred in their bucket: never exactly 0 or 1, so the logs of the Gumbel noise stay finite.
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * 2.0**-24 + 2.0**-25


def fold_in(seed, data):
    """A new `[2]` int32 seed from `seed` and the int32 scalar `data` (e.g. the step)."""
    return tf.bitcast(tf.stack(_fold(seed, data)), tf.int32)


def uniform(shape, seed):
    """Float32 uniform noise in (0, 1) of a 2-D `shape`, a pure function of `seed` and each element's position.

    A counter-based hash, not `tf.random.stateless_uniform`: TensorFlow's stateless ops draw different
    numbers under XLA than outside it, and the exported (non-XLA) SavedModel must sample what the
    XLA-compiled `generate` samples.
    """
    key = tf.bitcast(tf.convert_to_tensor(seed, tf.int32), tf.uint32)  # (2,)
    rows, columns = shape[0], shape[1]
    counter = tf.cast(tf.range(rows)[:, None] * columns + tf.range(columns)[None, :], tf.uint32)  # (B, V)
    return _to_unit(_bits(counter, key[0], key[1]))  # (B, V)


def uniform_at(seed, steps, width):
    """`uniform` for a step per row and draw: float32 `[batch, T, width]` from int32 `steps` `[batch, T]`.

    Element `[b, t]` is row b of `uniform([batch, width], fold_in(seed, steps[b, t]))`, so speculative decoding,
    whose rows reach a step at different times, draws what a row at that step draws.
    """
    first, second = _fold(seed, steps)  # (B, T) each
    batch = tf.shape(steps)[0]
    counter = tf.cast(tf.range(batch)[:, None, None] * width + tf.range(width)[None, None, :], tf.uint32)  # (B, 1, W)
    return _to_unit(_bits(counter, first[..., None], second[..., None]))  # (B, T, W)


def _gumbel_argmax(logits, seed):
    """A sample of softmax(logits) per row: argmax(logits + Gumbel noise). `[batch, vocab]` -> `[batch]`."""
    gumbel = -tf.math.log(-tf.math.log(uniform(tf.shape(logits), seed)))  # (B, V)
    return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)


def _drop_below_kth(logits, sorted_logits):
    """Top-k's rule: filters out the logits below the k-th largest, the last of the descending `sorted_logits`
    `[batch, k]`. Ties with it stay, so more than k tokens may (as HF's `TopKLogitsWarper` keeps them)."""
    return tf.where(logits < sorted_logits[:, -1:], _FILTERED_LOGIT, logits)


class GreedySampler(Sampler):
    """Always the most likely token (ties: the lowest id). Deterministic; ignores the seed.

    Example:
    >>> GreedySampler().get_next_token(tf.constant([[0.1, 2.0, 0.5]]), None).numpy().tolist()
    [1]
    """

    def __init__(self):
        super().__init__(temperature=1.0)

    def get_next_token(self, logits, seed):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def probabilities(self, logits):
        return tf.one_hot(tf.argmax(logits, axis=-1, output_type=tf.int32), logits.shape[-1])

    def sample(self, probabilities, noise):
        return tf.argmax(probabilities, axis=-1, output_type=tf.int32)

    def get_config(self):
        return {}


class RandomSampler(Sampler):
    """A sample of softmax(logits / temperature) over the whole vocabulary (the "temperature" sampler): `Sampler`'s
    own draw, with no token filtered out.

    Example:
    >>> sampler = RandomSampler(temperature=0.8)
    >>> sampler.get_next_token(tf.constant([[0.0, 1e9, 0.0]]), tf.constant([1, 2])).numpy().tolist()
    [1]
    """


class TopKSampler(Sampler):
    """A sample among the `k` most likely tokens, renormalised, after dividing by the temperature.

    Args:
        k: int >= 1. Number of candidate tokens per step.
        temperature: float > 0, default 1.

    Example:
    >>> sampler = TopKSampler(k=2)
    >>> token = sampler.get_next_token(tf.constant([[5.0, 0.0, 4.0, -1.0]]), tf.constant([0, 7]))
    >>> int(token[0]) in (0, 2)
    True
    """

    def __init__(self, k: int, temperature: float = 1.0):
        super().__init__(temperature)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`top_k` must be an integer >= 1. Received: `top_k={k!r}`")
        self.k = k

    def filter_logits(self, logits):
        logits = super().filter_logits(logits)
        return _drop_below_kth(logits, tf.math.top_k(logits, k=min(self.k, logits.shape[-1])).values)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


class TopPSampler(Sampler):
    """Nucleus sampling: a sample among the smallest set of most likely tokens whose probability reaches `p`.

    Args:
        p: float in (0, 1]. Probability mass of the nucleus; the most likely token is always kept, and 1 keeps
            every token (every top-k one, with `k`).
        k: optional int >= 1. Top-k first, by `TopKSampler`'s rule (tokens tied with the k-th logit stay): the
            nucleus is then the smallest set of those most likely tokens holding `p` of their renormalised mass,
            ties ranked by id (as HF's TopK -> TopP warpers); also limits the sort to `k` entries.
        temperature: float > 0, default 1. Applied before the nucleus is computed.

    Example:
    >>> sampler = TopPSampler(p=0.5)
    >>> sampler.get_next_token(tf.constant([[0.0, 3.0, 0.0]]), tf.constant([0, 1])).numpy().tolist()
    [1]
    """

    def __init__(self, p: float, k: int | None = None, temperature: float = 1.0):
        super().__init__(temperature)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1]. Received: `top_p={p}`")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"`top_k` must be an integer >= 1 or None. Received: `top_k={k!r}`")
        self.p = float(p)
        self.k = k

    def filter_logits(self, logits):
        logits = super().filter_logits(logits)
        vocab = logits.shape[-1]
        k = vocab if self.k is None else min(self.k, vocab)
        if self.p >= 1.0:
            # The nucleus is every (top-k) token, and HF adds no top-p warper at top_p=1: decided here, not by the
            # cumsum below, which in float32 reaches 1 before the end of a large vocabulary and would cut its tail.
            return logits if k == vocab else _drop_below_kth(logits, tf.math.top_k(logits, k=k).values)
        sorted_logits, sorted_ids = tf.math.top_k(logits, k=k, sorted=True)  # (B, k) each
        if k < vocab:
            logits = _drop_below_kth(logits, sorted_logits)
        # Softmax in float32 over the tokens top-k kept: with top_k the nucleus is measured in the renormalised top-k
        # distribution, as HF's TopK -> TopP warpers and vLLM measure it (without top_k, over the vocabulary).
        log_normaliser = tf.reduce_logsumexp(logits, axis=-1, keepdims=True)  # (B, 1)
        sorted_probs = tf.exp(sorted_logits - log_normaliser)  # (B, k)
        mass_before = tf.cumsum(sorted_probs, axis=-1, exclusive=True)  # (B, k)
        # A token is in the nucleus if the tokens ranked above it hold less than p; rank 0 always is.
        keep_sorted = tf.logical_or(mass_before < self.p, tf.range(k)[None, :] == 0)  # (B, k)
        batch = tf.shape(logits)[0]
        row_ids = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(sorted_ids))  # (B, k)
        sorted_state = tf.scatter_nd(
            tf.stack([row_ids, sorted_ids], axis=-1), tf.where(keep_sorted, 2, 1), tf.shape(logits)
        )  # (B, V): 2 in the nucleus, 1 sorted but outside it, 0 not among the k sorted
        keep = sorted_state == 2
        if k < vocab:
            # Top-k kept the ties with the k-th logit beyond the k sorted too. A full sort (HF's TopP warper) ranks
            # them next, lowest id first: each is in the nucleus if the mass ranked before it is under p.
            kth_largest = sorted_logits[:, -1:]  # (B, 1)
            beyond = tf.logical_and(logits == kth_largest, sorted_state == 0)  # (B, V)
            rank_beyond = tf.cumsum(tf.cast(beyond, tf.float32), axis=-1, exclusive=True)  # (B, V)
            mass_before_beyond = (tf.reduce_sum(sorted_probs, axis=-1, keepdims=True)
                                  + rank_beyond * tf.exp(kth_largest - log_normaliser))  # (B, V)
            keep = tf.logical_or(keep, tf.logical_and(beyond, mass_before_beyond < self.p))
        return tf.where(keep, logits, _FILTERED_LOGIT)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "k": self.k}


SAMPLERS = ("greedy", "temperature", "top_k", "top_p")


def get_sampler(sampler: str | Sampler = "greedy", temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> Sampler:
    """Maps a sampler name and its settings to a `Sampler`, rejecting settings the sampler would ignore.

    Args:
        sampler: one of "greedy", "temperature", "top_k", "top_p", or a `Sampler` (returned as is; the
            other arguments must then keep their defaults).
        temperature: float >= 0, default 1. 0 means greedy, with "temperature" (or "greedy"); "top_k" and "top_p"
            need it > 0, since greedy decoding would ignore their top_k and top_p.
        top_k: int, required by "top_k"; optional for "top_p" (top-k, then the nucleus).
        top_p: float in (0, 1], required by "top_p".

    Returns:
        A `Sampler`.

    Raises:
        ValueError: for an unknown name, a missing or out-of-range setting, or a setting the chosen sampler
            does not use (e.g. `top_k` with "temperature", or with temperature 0).

    Example:
    >>> get_sampler("top_p", temperature=0.8, top_p=0.95).get_config()
    {'temperature': 0.8, 'p': 0.95, 'k': None}
    >>> type(get_sampler("temperature", temperature=0)).__name__
    'GreedySampler'
    """
    if isinstance(sampler, Sampler):
        if (temperature, top_k, top_p) != (1.0, None, None):
            raise ValueError("Pass temperature/top_k/top_p to the Sampler's constructor, not beside a Sampler.")
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {list(SAMPLERS)} or pass a Sampler.")
    if temperature is None or not 0 <= temperature <= _LARGEST_FLOAT32:
        raise ValueError(f"`temperature` must be >= 0 (0 means greedy) and a finite float32. Received: "
                         f"`temperature={temperature}`")
    unused = {
        "greedy": {"top_k": top_k, "top_p": top_p},
        "temperature": {"top_k": top_k, "top_p": top_p},
        "top_k": {"top_p": top_p},
        "top_p": {},
    }[sampler]
    unused = sorted(name for name, value in unused.items() if value is not None)
    if unused:
        raise ValueError(
            f"The {sampler!r} sampler does not use {unused}; drop them or pick the sampler that does "
            f"(top_k: 'top_k' or 'top_p', top_p: 'top_p')."
        )
    if sampler == "greedy" and temperature not in (0, 1):
        raise ValueError(f"The 'greedy' sampler has no temperature; use 'temperature'. Received: {temperature}")
    if sampler == "top_k" and top_k is None:
        raise ValueError("The 'top_k' sampler needs top_k, e.g. top_k=40.")
    if sampler == "top_p" and top_p is None:
        raise ValueError("The 'top_p' sampler needs top_p, e.g. top_p=0.95.")
    # Checked first, so a bad top_k/top_p is named even beside temperature 0.
    if sampler == "top_k":
        TopKSampler(top_k)
    if sampler == "top_p":
        TopPSampler(top_p, top_k)
    if sampler in ("top_k", "top_p") and temperature == 0:
        settings = ", ".join(f"`{name}={value}`" for name, value in (("top_k", top_k), ("top_p", top_p))
                             if value is not None)
        # Backticked arguments: a script prints them as its flags (`--temperature=0`).
        raise ValueError(
            f"`temperature=0` is greedy decoding, which would ignore {settings}; pass a `temperature` > 0 to sample "
            "with them, or drop them for greedy."
        )
    if sampler == "greedy" or temperature == 0:
        return GreedySampler()
    if sampler == "temperature":
        return RandomSampler(temperature)
    if sampler == "top_k":
        return TopKSampler(top_k, temperature)
    return TopPSampler(top_p, top_k, temperature)
