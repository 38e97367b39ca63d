"""Samplers, driven by fake `next` functions, so random samplers get exact assertions."""

import numpy as np
import pytest
import tensorflow as tf

from tf_lm.generation.samplers import (
    GreedySampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
)

VOCAB = 8
BATCH = 2
LENGTH = 6


def one_hot_next(token_of_index):
    """A `next` whose logits put 1e9 on `token_of_index(index)`, so every sampler must pick that token."""

    def next(tokens, cache, index):
        token = token_of_index(index)
        return tf.one_hot(tf.fill([BATCH], token), VOCAB) * 1e9, cache

    return next


def fixed_logits_next(logits):
    """A `next` that returns the same `[vocab]` logits for every row and step."""

    def next(tokens, cache, index):
        return tf.broadcast_to(tf.constant(logits, tf.float32), [tf.shape(tokens)[0], len(logits)]), cache

    return next


def draws(sampler, logits, seeds, batch=64):
    """Tokens from `batch` rows × `seeds` steps of `get_next_token` on the same logits."""
    rows = tf.broadcast_to(tf.constant(logits, tf.float32), [batch, len(logits)])
    return np.concatenate([sampler.get_next_token(rows, tf.constant([seed, 7])).numpy() for seed in range(seeds)])


@pytest.mark.parametrize(
    "sampler", [GreedySampler(), RandomSampler(0.7), TopKSampler(3), TopPSampler(0.5), TopPSampler(0.9, k=2)]
)
def test_every_sampler_follows_one_hot_logits(sampler):
    tokens, cache, index, done = sampler(
        one_hot_next(lambda index: index % VOCAB), tf.zeros([BATCH, LENGTH], tf.int32), {"kept": tf.ones([1])},
        2, LENGTH, seed=tf.constant([1, 2]),
    )
    np.testing.assert_array_equal(tokens.numpy(), [[0, 0, 2, 3, 4, 5]] * BATCH)
    assert int(index) == LENGTH and not done.numpy().any()
    assert float(cache["kept"][0]) == 1.0


def test_stop_token_ends_rows_and_the_loop():
    per_row = tf.constant([[3, 5, 5, 5], [5, 3, 5, 5]])  # row 0 stops at slot 0, row 1 at slot 1 (stop = 3)

    def next(tokens, cache, index):
        return tf.one_hot(per_row[:, index], VOCAB) * 1e9, cache

    tokens, _, index, done = GreedySampler()(
        next, tf.zeros([2, 4], tf.int32), (), 0, 4, stop_token_ids=tf.constant([3])
    )
    # Row 0 emits 0 after its stop; the loop exits once both rows have stopped, leaving slots 2, 3 unfilled.
    np.testing.assert_array_equal(tokens.numpy(), [[3, 0, 0, 0], [5, 3, 0, 0]])
    assert int(index) == 2 and done.numpy().all()


def test_top_k_never_emits_outside_the_top_k():
    logits = [0.5, 3.0, -1.0, 2.9, 0.0, 2.8, 1.0, -2.0]  # top 3: ids 1, 3, 5
    tokens = draws(TopKSampler(3, temperature=2.0), logits, seeds=20)
    assert set(tokens.tolist()) == {1, 3, 5}  # only the top 3, and each of them


def test_top_p_never_emits_outside_the_nucleus():
    probabilities = np.array([0.05, 0.4, 0.02, 0.3, 0.13, 0.05, 0.03, 0.02])
    logits = np.log(probabilities)
    # Sorted: 0.4 (1), 0.3 (3), 0.13 (4), ... Mass before 4 is 0.7 < 0.75, before the next 0.83: nucleus {1, 3, 4}.
    tokens = draws(TopPSampler(0.75), logits, seeds=20)
    assert set(tokens.tolist()) == {1, 3, 4}
    # With top-k first, k=2 cuts the nucleus to {1, 3}.
    assert set(draws(TopPSampler(0.75, k=2), logits, seeds=10).tolist()) == {1, 3}
    # A tiny p keeps only the most likely token.
    assert set(draws(TopPSampler(1e-3), logits, seeds=3).tolist()) == {1}


def test_random_sampler_matches_the_softmax_distribution():
    probabilities = np.array([0.6, 0.3, 0.1])
    tokens = draws(RandomSampler(), np.log(probabilities), seeds=50, batch=200)  # 10,000 draws
    frequencies = np.bincount(tokens, minlength=3) / tokens.size
    np.testing.assert_allclose(frequencies, probabilities, atol=0.02)


def test_temperature_sharpens_and_flattens():
    logits = np.log([0.6, 0.3, 0.1])
    cold = draws(RandomSampler(0.05), logits, seeds=5)
    hot = np.bincount(draws(RandomSampler(100.0), logits, seeds=50, batch=200), minlength=3) / 10_000
    assert set(cold.tolist()) == {0}
    np.testing.assert_allclose(hot, [1 / 3] * 3, atol=0.03)


@pytest.mark.parametrize("temperature", [1e-30, 1e-45])
def test_a_tiny_temperature_draws_the_argmax_without_nan(temperature):
    # Its limit is greedy. 1e-45 is a float32 subnormal, which the CPU flushes to 0: logits / temperature was +-inf
    # and 0 / 0 = NaN, and decoding emitted token 0. At 1e-30 an all-negative row divided below the filtered-out
    # logits, so top-k drew a token it had dropped. Rows from all-negative to all-positive logits:
    logits = np.random.default_rng(0).normal(0.0, 2.0, size=(16, 50)) + np.linspace(-100.0, 100.0, 16)[:, None]
    logits = tf.constant(logits, tf.float32)
    greedy = np.argmax(logits.numpy(), axis=-1)
    for sampler in (RandomSampler(temperature), TopKSampler(5, temperature), TopPSampler(0.9, 5, temperature),
                    TopPSampler(0.9, temperature=temperature)):
        for filter_logits in (sampler.filter_logits, tf.function(sampler.filter_logits, jit_compile=True)):
            assert not np.isnan(filter_logits(logits).numpy()).any(), sampler.get_config()
        # What speculative decoding draws from: one-hot on the argmax.
        np.testing.assert_allclose(sampler.probabilities(logits).numpy(), np.eye(50)[greedy], atol=1e-6)
        for seed in range(5):
            np.testing.assert_array_equal(sampler.get_next_token(logits, tf.constant([seed, 7])).numpy(), greedy)


def test_temperature_zero_is_greedy():
    logits = [0.1, 2.0, 1.9, -1.0]
    for name in ("temperature", "greedy"):
        sampler = get_sampler(name, temperature=0.0)
        assert isinstance(sampler, GreedySampler)
        assert set(draws(sampler, logits, seeds=3).tolist()) == {1}


def test_temperature_zero_beside_top_k_or_top_p_is_refused():
    # Greedy decoding would ignore them: a --top_k=5 export with the old default temperature 0 was silently greedy.
    for settings, named in [({"sampler": "top_k", "top_k": 5}, "`top_k=5`"),
                            ({"sampler": "top_p", "top_p": 0.9, "top_k": 3}, "`top_k=3`, `top_p=0.9`")]:
        with pytest.raises(ValueError, match=f"`temperature=0` is greedy decoding, which would ignore {named}"):
            get_sampler(temperature=0.0, **settings)


def test_the_scripts_name_the_sampling_flags_in_the_samplers_errors():
    from absl import flags

    from experiments.flags import in_flag_terms

    script_flags = flags.FlagValues()
    for name in ("temperature", "top_k", "top_p"):
        flags.DEFINE_float(name, None, "", flag_values=script_flags, module_name="experiments.generate")
    with pytest.raises(ValueError) as error:
        get_sampler("top_k", temperature=0.0, top_k=5)
    assert in_flag_terms(str(error.value), script_flags).startswith(
        "--temperature=0 is greedy decoding, which would ignore --top_k=5; pass a --temperature > 0")
    with pytest.raises(ValueError) as error:
        get_sampler("top_p", top_p=1.5)
    assert in_flag_terms(str(error.value), script_flags) == "--top_p must be in (0, 1]. Received: --top_p=1.5"


def test_top_k_then_top_p_keeps_what_hf_warpers_keep():
    from transformers import TFTopKLogitsWarper, TFTopPLogitsWarper

    logits = np.random.default_rng(0).normal(0.0, 2.0, size=(6, 12)).astype(np.float32)
    for k, p in [(3, 0.6), (5, 0.8), (8, 0.5), (12, 0.9)]:
        hf = TFTopPLogitsWarper(p)(None, TFTopKLogitsWarper(k)(None, tf.constant(logits), 0), 0).numpy()
        ours = TopPSampler(p, k=k).filter_logits(tf.constant(logits)).numpy()
        np.testing.assert_array_equal(ours > -1e29, np.isfinite(hf))
    # The review's case: the top 3 of these renormalise to [0.46, 0.31, 0.23], so p=0.6 keeps two of them (the old
    # nucleus, measured against the whole vocabulary's mass, kept three).
    probabilities = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005])
    kept = TopPSampler(0.6, k=3).probabilities(tf.constant(np.log(probabilities)[None], tf.float32)).numpy()[0] > 0
    assert np.flatnonzero(kept).tolist() == [0, 1]


def test_top_k_then_top_p_keeps_the_ties_with_the_kth_logit_as_hf_warpers_do():
    from transformers import TFTopKLogitsWarper, TFTopPLogitsWarper

    # Top-k kept exactly k tokens, dropping those tied with the k-th logit (TopKSampler and HF keep them); the
    # nucleus then ranks the ties beyond the k sorted by id, and may cut among them (p=0.7 keeps ids 0, 1, 2).
    logits = tf.constant([[2.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 1.0, 1.0, 1.0]])
    for k, p in [(2, 0.99), (2, 0.7), (2, 0.5), (1, 0.3), (3, 0.9)]:
        hf = np.isfinite(TFTopPLogitsWarper(p)(None, TFTopKLogitsWarper(k)(None, logits, 0), 0).numpy())
        filter_logits = TopPSampler(p, k=k).filter_logits
        np.testing.assert_array_equal(filter_logits(logits).numpy() > -1e29, hf, err_msg=f"k={k}, p={p}")
        if (k, p) == (2, 0.7):  # under XLA too, as decoding runs it: its top_k must rank ties by id as well
            np.testing.assert_array_equal(tf.function(filter_logits, jit_compile=True)(logits).numpy() > -1e29, hf)


def test_top_p_of_one_keeps_every_token_of_a_large_vocabulary():
    # The float32 cumsum reached 1 before the end of GPT-2's 50257 tokens: top_p=1 cut 9 of them.
    logits = tf.constant(np.random.default_rng(0).normal(size=(1, 50257)), tf.float32)
    assert bool(tf.reduce_all(TopPSampler(1.0).filter_logits(logits) == logits))
    np.testing.assert_array_equal(TopPSampler(1.0, k=40).filter_logits(logits), TopKSampler(40).filter_logits(logits))


def test_same_seed_same_tokens_and_other_seeds_differ():
    sampler = TopPSampler(0.95, temperature=1.5)
    logits = np.zeros(VOCAB)
    buffer = tf.zeros([BATCH, 40], tf.int32)

    def run(seed):
        tokens, _, _, _ = sampler(fixed_logits_next(logits), buffer, (), 0, 40, seed=tf.constant(seed))
        return tokens.numpy()

    np.testing.assert_array_equal(run([3, 4]), run([3, 4]))
    assert not np.array_equal(run([3, 4]), run([3, 5]))
    # Rows draw different noise, so identical prompts still give different samples.
    first = run([3, 4])
    assert not np.array_equal(first[0], first[1])


def test_loop_compiles_with_xla_and_matches_eager():
    sampler = TopKSampler(4, temperature=0.9)
    logits = np.linspace(-1.0, 1.0, VOCAB)
    buffer = tf.zeros([BATCH, 12], tf.int32)

    def run(seed):
        return sampler(fixed_logits_next(logits), buffer, (), 0, 12, seed=seed)[0]

    seed = tf.constant([5, 6])
    np.testing.assert_array_equal(tf.function(run, jit_compile=True)(seed).numpy(), run(seed).numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampler": "beam"}, "Unknown sampler"),
        ({"sampler": "top_k"}, "needs top_k"),
        ({"sampler": "top_p"}, "needs top_p"),
        ({"sampler": "temperature", "top_k": 5}, "does not use"),
        ({"sampler": "greedy", "temperature": 0.5}, "no temperature"),
        ({"sampler": "temperature", "temperature": -1.0}, "`temperature` must be >= 0"),
        # Beyond float32 the logits divide to zeros, and a filtered logit to NaN: uniform noise, not a sample.
        ({"sampler": "temperature", "temperature": float("inf")}, "`temperature` must be >= 0 .* finite float32"),
        ({"sampler": "top_k", "top_k": 3, "temperature": 1e300}, "`temperature` must be >= 0 .* finite float32"),
        ({"sampler": "temperature", "temperature": float("nan")}, "`temperature` must be >= 0"),
        ({"sampler": "top_k", "top_k": 0}, "`top_k` must be an integer >= 1"),
        ({"sampler": "top_p", "top_p": 1.5}, r"`top_p` must be in \(0, 1\]"),
        ({"sampler": "top_p", "top_p": 0.5, "top_k": 0, "temperature": 0.0}, "`top_k` must be"),
        ({"sampler": GreedySampler(), "top_k": 3}, "Sampler's constructor"),
    ],
)
def test_get_sampler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(**kwargs)


def test_get_sampler_builds_combinations():
    sampler = get_sampler("top_p", temperature=0.7, top_k=20, top_p=0.9)
    assert isinstance(sampler, TopPSampler) and sampler.get_config() == {"temperature": 0.7, "p": 0.9, "k": 20}
    assert isinstance(get_sampler("top_k", top_k=5), TopKSampler)
    assert isinstance(get_sampler("temperature", temperature=1.3), RandomSampler)
    assert isinstance(get_sampler(), GreedySampler)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan"), 1e39])
def test_a_sampler_refuses_a_temperature_it_cannot_divide_by(temperature):
    with pytest.raises(ValueError, match=r"^`temperature` must be > 0 and a finite float32"):
        RandomSampler(temperature=temperature)
