"""Speculative decoding: a drafter proposes k tokens, the model checks all k in one cached forward pass and keeps
the longest prefix it agrees with plus one token of its own (Leviathan et al. 2023, "Fast Inference from
Transformers via Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with
Speculative Sampling").

Layout: as `generate`'s (left-padded prompts, each token at its true position, a `[batch, P + N + k + 1]` token
buffer), but every row has its own next column `index[b]`, since rows accept different numbers of tokens. Both
KV caches are written at per-row slots (`call_with_cache` with a `[batch]` cache_index), so rolling a row back
is moving its index: the slots past it hold rejected tokens that are overwritten before any query attends them.

The rejection rule: draft token d_i (drawn from the draft's distribution q_i) is accepted when u_i < p_i(d_i) /
q_i(d_i), with p_i the model's distribution and u_i uniform; at the first rejection the model's token is drawn
from max(p_i - q_i, 0), renormalised, and after k acceptances from p_k. Every emitted token is then distributed
exactly as the model's (with the sampler's temperature / top-k / top-p applied to both). Greedy decoding is the
case where p and q are one-hot: a draft is kept iff it is the model's argmax, so the output is plain greedy's.
Draft draws, acceptance tests and the model's draws each have their own stream of the seed, keyed by
(row, new-token number) as in `generate`, so the same seed gives the same text under XLA and plain TF.
"""

from __future__ import annotations

import dataclasses
import weakref

import tensorflow as tf

from tf_lm.generation.samplers import Sampler, fold_in, uniform_at
from tf_lm.model import cache_slots

DRAFTERS = ("model", "prompt_lookup")
# Seed streams of the draft's draws and of the acceptance tests (the model's draws use the seed itself, as
# `generate` does); negative, so never a new-token number.
_DRAFT_STREAM, _ACCEPT_STREAM = -1, -2


def _row_gather(tokens, columns):
    """`tokens[b, columns[b, t]]`: int32 `[batch, T]` from `[batch, L]` and `[batch, T]`."""
    return tf.gather(tokens, columns, batch_dims=1)


def check_sampler(sampler: Sampler) -> None:
    """Refuses a sampler whose distribution speculative decoding cannot know.

    The rejection rule draws through `sampler.probabilities` and `sampler.sample`, never `get_next_token`. A sampler
    that overrides `get_next_token` below the class that defines its `probabilities` (a custom sampler written
    against `get_next_token` alone, say) would be replaced by softmax(`filter_logits`) without a word.

    Raises:
        ValueError: for such a sampler.
    """
    def owner(name):
        return next(cls for cls in type(sampler).__mro__ if name in vars(cls))

    if not issubclass(owner("probabilities"), owner("get_next_token")):
        raise ValueError(
            f"Speculative decoding cannot use {type(sampler).__name__}: it overrides get_next_token but not "
            "probabilities, which speculation draws from; override filter_logits instead, or probabilities "
            "(and sample) beside get_next_token, or decode without a drafter."
        )


@dataclasses.dataclass
class SpeculationStats:
    """What the drafter achieved: `rounds` (row-rounds run, one model pass each), `accepted` (drafts the model kept
    that were output: not those a stop token or `max_new_tokens` cut off) and `tokens` (tokens output), with `k`
    drafts per round."""

    rounds: int
    accepted: int
    tokens: int
    num_speculative_tokens: int

    @property
    def accepted_per_round(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.tokens / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_per_round / self.num_speculative_tokens

    def __str__(self) -> str:
        return (f"{self.tokens_per_round:.2f} tokens per model pass ({self.accepted_per_round:.2f} of "
                f"{self.num_speculative_tokens} drafted accepted, {self.acceptance_rate:.0%})")


class ModelDrafter:
    """Drafts with a smaller `TransformerLM` over the same vocabulary, with its own KV cache.

    Each round feeds the draft the row's last two tokens (the second-to-last is the model's last draft, which the
    draft has not seen when all k were accepted; otherwise it rewrites a slot with what it holds), then k - 1 of
    its own draws: k draft calls per round.
    """

    def __init__(self, draft_model, num_speculative_tokens: int):
        self.draft_ref = weakref.ref(draft_model)
        self.k = num_speculative_tokens

    @property
    def key(self):
        return ("model", id(self.draft_ref()), self.k)

    def start(self, prompt, cache_mask, pad_lengths, slots):
        draft = self.draft_ref()
        cache = draft.init_cache(tf.shape(prompt)[0] if prompt.shape[0] is None else prompt.shape[0], slots)
        positions = tf.maximum(tf.range(tf.shape(prompt)[1] - 1)[None, :] - pad_lengths[:, None], 0)
        _, cache = draft.call_with_cache(prompt[:, :-1], cache, 0, padding_mask=cache_mask, position_ids=positions)
        return cache

    def propose(self, sampler: Sampler, tokens, index, cache, cache_mask, pad_lengths, seed, prompt_length):
        draft = self.draft_ref()
        columns = index[:, None] + tf.constant([-2, -1])  # (B, 2)
        fed = _row_gather(tokens, columns)  # (B, 2)
        slot = index - 2
        drafts, probabilities = [], []
        for i in range(self.k):
            logits, cache = draft.call_with_cache(
                fed, cache, slot, padding_mask=cache_mask,
                position_ids=tf.maximum(columns - pad_lengths[:, None], 0),
            )
            q = sampler.probabilities(logits[:, -1])  # (B, V)
            step = (index + i - prompt_length)[:, None]  # (B, 1): the new-token number of the draft
            token = sampler.sample(q, uniform_at(fold_in(seed, _DRAFT_STREAM), step, q.shape[-1])[:, 0])  # (B,)
            drafts.append(token)
            probabilities.append(q)
            fed, slot = token[:, None], index + i
            columns = (index + i)[:, None]
        return tf.stack(drafts, axis=1), tf.stack(probabilities, axis=1), cache  # (B, k), (B, k, V)


class PromptLookupDrafter:
    """Drafts the k tokens that followed the most recent earlier occurrence of the row's last n-gram (n = 3, else
    2, else 1), as HF's prompt lookup does; no second model. Without a match it drafts the last token repeated.

    Useful where the text repeats itself: code, or answers that quote their prompt.
    """

    def __init__(self, num_speculative_tokens: int, vocab_size: int, max_ngram: int = 3):
        self.k, self.vocab_size, self.max_ngram = num_speculative_tokens, vocab_size, max_ngram

    @property
    def key(self):
        return ("prompt_lookup", self.k, self.max_ngram)

    def start(self, prompt, cache_mask, pad_lengths, slots):
        return tf.zeros([0])

    def propose(self, sampler: Sampler, tokens, index, state, cache_mask, pad_lengths, seed, prompt_length):
        length = tokens.shape[1] if tokens.shape[1] is not None else tf.shape(tokens)[1]
        starts = tf.range(length)[None, :]  # (1, L): candidate start j of an earlier occurrence
        last = index - 1
        found = tf.zeros_like(index, tf.bool)
        follow = last  # (B,): the column after the match, where the draft starts
        for n in range(self.max_ngram, 0, -1):
            suffix = _row_gather(tokens, index[:, None] - n + tf.range(n)[None, :])  # (B, n)
            # An earlier occurrence ends before the last token, so that at least one token follows it.
            match = (starts >= pad_lengths[:, None]) & (starts + n <= last[:, None])  # (B, L)
            match &= (index - n >= pad_lengths)[:, None]  # the n-gram itself holds real tokens only
            for t in range(n):
                shifted = _row_gather(tokens, tf.minimum(starts + t, length - 1) + tf.zeros_like(index)[:, None])
                match &= shifted == suffix[:, t : t + 1]
            latest = tf.reduce_max(tf.where(match, starts, -1), axis=1)  # (B,), -1 without a match
            use = ~found & (latest >= 0)
            follow = tf.where(use, latest + n, follow)
            found |= use
        # Tokens that would run past the known context repeat its last one.
        drafts = _row_gather(tokens, tf.minimum(follow[:, None] + tf.range(self.k)[None, :], last[:, None]))
        return drafts, tf.one_hot(drafts, self.vocab_size), state  # (B, k), (B, k, V)


def prefill(model, drafter, prompt, pad_lengths, max_new_tokens, k):
    """The speculative loop's starting state: the buffer, both caches holding the prompt but its last token.

    Returns a dict of `tokens` `[B, P + N + k + 1]`, `index` `[B]` (each row's next column), `cache`, `draft`
    (the drafter's state), `done` `[B]`, `rounds` and `accepted` `[B]` (the statistics: rounds run, and accepted
    drafts output).
    """
    batch, prompt_length = prompt.shape[0], prompt.shape[1]
    if batch is None:
        batch, prompt_length = tf.shape(prompt)[0], tf.shape(prompt)[1]
    slots = prompt_length + max_new_tokens + k  # the last round may run k columns past the end
    tokens = tf.pad(prompt, [[0, 0], [0, max_new_tokens + k + 1]])
    cache_mask = tf.range(slots)[None, :] >= pad_lengths[:, None]  # (B, S)
    cache = model.init_cache(batch, slots)
    positions = tf.maximum(tf.range(prompt_length - 1)[None, :] - pad_lengths[:, None], 0)
    _, cache = model.call_with_cache(prompt[:, :-1], cache, 0, padding_mask=cache_mask, position_ids=positions)
    zeros = tf.zeros([batch], tf.int32)
    return {
        "tokens": tokens, "index": zeros + prompt_length, "cache": cache,
        "draft": drafter.start(prompt, cache_mask, pad_lengths, slots),
        "done": tf.zeros([batch], tf.bool), "rounds": zeros, "accepted": zeros,
    }


def rounds(model, drafter, sampler: Sampler, state, pad_lengths, end_index, final_index, seed, stop_token_ids,
           prompt_length):
    """Runs speculative rounds until every row that has not stopped reaches `end_index` (a row may run past it,
    never past `final_index` = P + N). Returns the new state."""
    k = drafter.k
    cache_mask = tf.range(cache_slots(state["cache"]))[None, :] >= pad_lengths[:, None]  # (B, S)

    def active(state):
        return ~state["done"] & (state["index"] < final_index)

    def cond(state):
        return tf.reduce_any(~state["done"] & (state["index"] < end_index))

    def body(state):
        tokens, index = state["tokens"], state["index"]
        batch = tf.shape(tokens)[0]
        drafts, q, draft_state = drafter.propose(
            sampler, tokens, index, state["draft"], cache_mask, pad_lengths, seed, prompt_length
        )  # (B, k), (B, k, V)
        fed = tf.concat([_row_gather(tokens, index[:, None] - 1), drafts], axis=1)  # (B, k + 1)
        positions = (index - 1 - pad_lengths)[:, None] + tf.range(k + 1)[None, :]  # (B, k + 1)
        logits, cache = model.call_with_cache(
            fed, state["cache"], index - 1, padding_mask=cache_mask, position_ids=positions
        )  # (B, k + 1, V)
        p = sampler.probabilities(logits)  # (B, k + 1, V)
        steps = (index - prompt_length)[:, None] + tf.range(k + 1)[None, :]  # (B, k + 1): new-token numbers

        p_draft = tf.gather(p[:, :k], drafts, batch_dims=2)  # (B, k)
        q_draft = tf.gather(q, drafts, batch_dims=2)  # (B, k)
        u = uniform_at(fold_in(seed, _ACCEPT_STREAM), steps[:, :k], 1)[..., 0]  # (B, k)
        # u < p/q without the division; greedy: p, q one-hot, so exactly "the draft is the model's argmax".
        accepted = tf.cast(u * q_draft < p_draft, tf.int32)
        n = tf.reduce_sum(tf.math.cumprod(accepted, axis=1), axis=1)  # (B,): the accepted prefix

        q_padded = tf.concat([q, tf.zeros_like(q[:, :1])], axis=1)  # (B, k + 1, V): no draft after the k-th
        p_n, q_n = tf.gather(p, n, batch_dims=1), tf.gather(q_padded, n, batch_dims=1)  # (B, V)
        residual = tf.maximum(p_n - q_n, 0.0)
        # p == q leaves nothing to draw from (and the draft was then accepted but for rounding): draw from p.
        residual = tf.where(tf.reduce_sum(residual, axis=-1, keepdims=True) > 0, residual, p_n)
        noise = uniform_at(seed, tf.gather(steps, n[:, None], batch_dims=1), p.shape[-1])[:, 0]  # (B, V)
        own = sampler.sample(residual, noise)  # (B,)

        slots = tf.range(k + 1)[None, :]  # (1, k + 1)
        emitted = tf.where(slots < n[:, None], tf.concat([drafts, drafts[:, :1]], axis=1), own[:, None])
        count = tf.minimum(n + 1, final_index - index)  # (B,): no row passes max_new_tokens
        is_stop = tf.reduce_any(emitted[:, :, None] == stop_token_ids[None, None, :], axis=-1)  # (B, k + 1)
        is_stop &= slots < count[:, None]
        first_stop = tf.argmax(tf.cast(is_stop, tf.int32), axis=1, output_type=tf.int32)
        stopped = tf.reduce_any(is_stop, axis=1)
        count = tf.where(stopped, first_stop + 1, count)
        live = active(state)
        count = tf.where(live, count, 0)
        columns = index[:, None] + slots  # (B, k + 1)
        write = tf.stack([tf.broadcast_to(tf.range(batch)[:, None], tf.shape(columns)), columns], axis=-1)
        tokens = tf.tensor_scatter_nd_update(tokens, write, tf.where(slots < count[:, None], emitted, 0))
        return {
            "tokens": tokens, "index": index + count, "cache": cache, "draft": draft_state,
            "done": state["done"] | (live & stopped),
            "rounds": state["rounds"] + tf.cast(live, tf.int32),
            # Only drafts that are output: a stop token or max_new_tokens may cut the accepted prefix (count is
            # 0 for a row that was not live).
            "accepted": state["accepted"] + tf.minimum(n, count),
        }

    return tf.while_loop(cond, lambda state: (body(state),), (state,))[0]
