"""Speculative decoding: greedy output identical to plain decoding, sampled output distributed as the model's,
caches rolled back to exactly a plain decode's, and the drafters (a draft model, prompt lookup)."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import emit_only

from tf_lm import LMConfig, TransformerLM, generate
from tf_lm.generation import GreedySampler, RandomSampler, TopKSampler, TopPSampler, speculative, stream
from tf_lm.generation.generate import _seed_tensor
from tf_lm.generation.speculative import ModelDrafter, PromptLookupDrafter

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2], [7]]


def random_model(n_layer, n_embd, stddev, seed, vocab_size=13, block_size=48):
    """A random model; large weights (`stddev`) make greedy continuations vary instead of repeating one token."""
    model = TransformerLM(LMConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2,
                                   n_embd=n_embd))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, stddev, w.shape).astype("float32") if w.ndim == 2 else w
                       for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def pair():
    keras.utils.set_random_seed(3)
    return random_model(2, 16, 0.5, seed=0), random_model(1, 16, 0.5, seed=1)


def joined(chunks, rows):
    return [sum((chunk[row] for chunk in chunks), []) for row in range(rows)]


def test_greedy_with_a_draft_is_plain_greedy_with_ragged_rows_and_stop_tokens(pair):
    model, draft = pair
    stop = 12  # ends rows 0 and 1 after 1 and 7 tokens, not row 2
    stopped = generate(model, PROMPTS, max_new_tokens=20, stop_token_ids=[stop])
    assert [len(row) for row in stopped] == [1, 7, 20]
    chunks = stream(model, PROMPTS, max_new_tokens=20, stop_token_ids=[stop], draft_model=draft,
                    num_speculative_tokens=3, chunk_size=6)
    assert joined(list(chunks), 3) == stopped
    assert 0 < chunks.speculation.rounds and 0 <= chunks.speculation.accepted_per_round <= 3


@pytest.mark.slow
def test_greedy_identity_for_a_trained_pair():
    # Both learn a periodic text, so the draft agrees often but not always.
    keras.utils.set_random_seed(4)
    text = np.array([0, 1, 2, 3, 4, 2, 3, 1, 0, 4, 4, 2] * 40, np.int32)
    windows = np.stack([text[i : i + 17] for i in range(0, 400, 3)])
    trained = []
    for n_layer, n_embd, epochs in ((2, 32, 12), (1, 16, 4)):
        model = TransformerLM(LMConfig(vocab_size=5, block_size=48, n_layer=n_layer, n_head=2, n_embd=n_embd))
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(windows[:, :-1], windows[:, 1:], epochs=epochs, batch_size=16, verbose=0)
        trained.append(model)
    model, draft = trained
    prompts = [[0, 1, 2], [4, 4, 2, 3, 1]]
    chunks = stream(model, prompts, max_new_tokens=30, draft_model=draft, num_speculative_tokens=4, chunk_size=30)
    assert joined(list(chunks), 2) == generate(model, prompts, max_new_tokens=30)
    assert 0.3 < chunks.speculation.acceptance_rate < 1.0


def test_the_statistics_count_only_the_drafts_that_are_output(pair):
    model, _ = pair
    # The model as its own draft accepts all k = 4 drafts of every round, but max_new_tokens=6 ends the second
    # round after its first draft: 2 passes, 6 tokens, 5 of them drafts (not 8).
    chunks = stream(model, [[1, 2, 3]], max_new_tokens=6, draft_model=model, num_speculative_tokens=4, chunk_size=6)
    [new] = joined(list(chunks), 1)
    assert (chunks.speculation.rounds, chunks.speculation.accepted, chunks.speculation.tokens) == (2, 5, 6)
    assert str(chunks.speculation) == "3.00 tokens per model pass (2.50 of 4 drafted accepted, 62%)"
    # A stop token among the first round's drafts ends it there: the drafts after it are not output.
    stop = new[2]
    chunks = stream(model, [[1, 2, 3]], max_new_tokens=6, draft_model=model, num_speculative_tokens=4, chunk_size=6,
                    stop_token_ids=[stop])
    emitted = new.index(stop) + 1
    assert joined(list(chunks), 1) == [new[:emitted]]
    assert (chunks.speculation.rounds, chunks.speculation.accepted, chunks.speculation.tokens) == (1, emitted, emitted)


def test_a_sampler_speculation_cannot_draw_from_is_refused(pair):
    model, _ = pair

    class MinP(RandomSampler):
        """Written as plain decoding wants (get_next_token alone): speculation would draw from softmax(logits)."""

        def get_next_token(self, logits, seed):
            cut = tf.reduce_max(logits, axis=-1, keepdims=True) + np.log(0.5)
            return super().get_next_token(tf.where(logits < cut, -1e30, logits), seed)

    class Evens(RandomSampler):
        """Changes only filter_logits, so both decoders draw from it."""

        def filter_logits(self, logits):
            return tf.where(tf.range(logits.shape[-1]) % 2 == 0, super().filter_logits(logits), -1e30)

    with pytest.raises(ValueError, match="Speculative decoding cannot use MinP: it overrides get_next_token"):
        generate(model, [[1, 2]], max_new_tokens=4, sampler=MinP(), drafter="prompt_lookup")
    assert len(generate(model, [[1, 2]], max_new_tokens=4, sampler=MinP())[0]) == 4  # plain decoding uses it
    for sampler in (GreedySampler(), RandomSampler(), TopKSampler(3), TopPSampler(0.9, k=4), Evens()):
        speculative.check_sampler(sampler)
    new = generate(model, [[1, 2]] * 4, max_new_tokens=6, sampler=Evens(), drafter="prompt_lookup", seed=3)
    assert all(token % 2 == 0 for row in new for token in row)


@pytest.mark.slow  # 16 s
def test_a_draft_equal_to_the_model_accepts_every_token(pair):
    model, _ = pair
    chunks = stream(model, PROMPTS, max_new_tokens=20, draft_model=model, num_speculative_tokens=3, chunk_size=20)
    assert joined(list(chunks), 3) == generate(model, PROMPTS, max_new_tokens=20)
    assert chunks.speculation.acceptance_rate == 1.0


@pytest.mark.slow
def test_a_draft_that_always_disagrees_still_gives_the_exact_greedy_output(pair):
    model, _ = pair
    plain = generate(model, PROMPTS, max_new_tokens=20)
    never = next(t for t in range(13) if all(t not in row for row in plain))
    draft = emit_only(random_model(1, 16, 0.5, seed=5), never)  # it always proposes `never`
    chunks = stream(model, PROMPTS, max_new_tokens=20, draft_model=draft, num_speculative_tokens=3, chunk_size=20)
    assert joined(list(chunks), 3) == plain
    assert chunks.speculation.accepted == 0


def test_prompt_lookup_drafts_what_followed_the_latest_match_of_the_last_ngram():
    tokens = tf.constant([
        [0, 0, 5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 7, 0, 0],  # "5 6 7" last seen followed by 1, 5, 6
        [0, 3, 4, 9, 9, 9, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0],  # "3 4" once before, followed by 9 9 9
        [0, 0, 0, 0, 1, 2, 3, 4, 8, 0, 0, 0, 0, 0, 0, 0],  # no earlier 8: the last token, repeated
        [2, 7, 2, 7, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # "7 2" at 1-2: then 7 2, the rest repeats the last
    ], tf.int32)
    index = tf.constant([14, 10, 9, 5], tf.int32)
    pad_lengths = tf.constant([2, 1, 4, 0], tf.int32)
    drafter = PromptLookupDrafter(4, vocab_size=10)
    drafts, q, _ = drafter.propose(GreedySampler(), tokens, index, drafter.start(None, None, None, None), None,
                                   pad_lengths, None, 0)
    assert drafts.numpy().tolist() == [[1, 5, 6, 7], [9, 9, 9, 1], [8, 8, 8, 8], [7, 2, 2, 2]]
    np.testing.assert_array_equal(q.numpy(), tf.one_hot(drafts, 10).numpy())


@pytest.mark.slow
def test_prompt_lookup_keeps_greedy_exact(pair):
    model, _ = pair
    chunks = stream(model, PROMPTS, max_new_tokens=20, drafter="prompt_lookup", num_speculative_tokens=3,
                    chunk_size=20)
    assert joined(list(chunks), 3) == generate(model, PROMPTS, max_new_tokens=20)
    assert chunks.speculation.rounds > 0


@pytest.mark.slow
def test_sampling_is_reproducible_and_streams_as_generate(pair):
    model, draft = pair
    settings = dict(max_new_tokens=16, sampler="top_p", top_p=0.9, temperature=1.5, draft_model=draft,
                    num_speculative_tokens=3)
    first = generate(model, PROMPTS, seed=5, **settings)
    assert generate(model, PROMPTS, seed=5, **settings) == first
    assert generate(model, PROMPTS, seed=6, **settings) != first
    assert joined(list(stream(model, PROMPTS, seed=5, chunk_size=5, **settings)), 3) == first


@pytest.mark.slow
def test_past_the_context_it_decodes_without_the_draft(pair):
    model, draft = pair
    chunks = stream(model, PROMPTS, max_new_tokens=60, draft_model=draft, chunk_size=60)
    assert joined(list(chunks), 3) == generate(model, PROMPTS, max_new_tokens=60)
    assert chunks.speculation is None


def chi_square_critical(dof, z=3.0902):
    """The chi-square quantile at significance 0.001 (z is the normal quantile), by Wilson-Hilferty."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def chi_square(counts, expected):
    """Pearson's statistic and its degrees of freedom, cells expecting fewer than 5 pooled into one."""
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    return float(((observed - expected) ** 2 / expected).sum()), len(observed) - 1


def test_sampled_sequences_follow_the_models_distribution():
    """3000 samples of 3 tokens (rows of one batch draw independent noise), against the exact joint distribution.

    Fixed seeds make the statistic a fixed number: the test passes or fails the same way on every run. It also
    rejects the draft's own distribution, so it would catch a decoder that emitted drafts uncorrected.
    """
    keras.utils.set_random_seed(6)
    vocab = 5
    model = random_model(2, 16, 0.3, seed=7, vocab_size=vocab, block_size=16)
    draft = random_model(1, 16, 0.3, seed=8, vocab_size=vocab, block_size=16)
    prompt, samples = [1, 3], 3000
    new = generate(model, [prompt] * samples, max_new_tokens=3, sampler="temperature", seed=11, draft_model=draft,
                   num_speculative_tokens=2)
    counts = np.zeros(vocab**3)
    for row in new:
        counts[np.ravel_multi_index(row, (vocab,) * 3)] += 1

    sequences = np.array([prompt + list(s) for s in itertools.product(range(vocab), repeat=3)], np.int32)
    for lm, should_match in ((model, True), (draft, False)):
        log_probs = tf.nn.log_softmax(lm(sequences)).numpy()  # (125, 5, V)
        # P(a, b, c) = p(a | prompt) p(b | prompt, a) p(c | prompt, a, b)
        steps = [log_probs[np.arange(len(sequences)), 1 + t, sequences[:, 2 + t]] for t in range(3)]
        expected = np.exp(np.sum(steps, axis=0)) * samples
        statistic, dof = chi_square(counts, expected)
        assert (statistic < chi_square_critical(dof)) == should_match, (statistic, dof)


def test_after_a_round_both_caches_equal_a_plain_decode_of_the_accepted_tokens(pair):
    model, draft = pair
    drafter = ModelDrafter(draft, 3)
    prompt = tf.constant([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]], tf.int32)  # row 0 left-padded
    pad_lengths = tf.constant([2, 0], tf.int32)
    state = speculative.prefill(model, drafter, prompt, pad_lengths, 10, 3)
    end = tf.constant(6)  # one round: every row reaches column 6
    state = speculative.rounds(model, drafter, RandomSampler(1.5), state, pad_lengths, end, tf.constant(15),
                               _seed_tensor(3), tf.zeros([0], tf.int32), 5)
    index = state["index"].numpy()
    assert (index >= 6).all() and (state["rounds"].numpy() == 1).all()
    for row in range(2):
        pad = int(pad_lengths[row])
        # The model holds every token but the row's last (the next round feeds it first); the draft has not seen
        # its own last draft (column 5 + k - 1) when all k were accepted, and catches up next round.
        ends = (index[row] - 1, min(index[row] - 1, 7))
        for lm, cache, end in zip((model, draft), (state["cache"], state["draft"]), ends):
            real = state["tokens"].numpy()[row, pad:end][None]  # (1, T)
            _, plain = lm.call_with_cache(real, lm.init_cache(1, real.shape[1]), 0)
            heads = slice(row * lm.config.n_head, (row + 1) * lm.config.n_head)  # the row's heads in the cache
            for (got_keys, got_values), (keys, values) in zip(cache, plain):
                np.testing.assert_allclose(got_keys.numpy()[heads, :, pad:end], keys.numpy(), atol=1e-5)
                np.testing.assert_allclose(got_values.numpy()[heads, pad:end], values.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_speculative_tokens": 0}, "`num_speculative_tokens` must be an integer >= 1"),
        ({"drafter": "ngram"}, r"`drafter` must be one of \['model', 'prompt_lookup'\]"),
        ({"drafter": "prompt_lookup", "draft_model": "draft"}, "takes no `draft_model`"),
        ({"drafter": "model", "draft_model": None}, "needs a `draft_model`"),
        ({"draft_model": "other_vocabulary"}, "draft vocab_size=11, model vocab_size=13"),
        ({"draft_model": "shorter_context"}, "draft block_size=24, model block_size=48"),
        # Without a drafter decoding is plain, and would ignore it.
        ({"draft_model": None, "num_speculative_tokens": 3}, "`num_speculative_tokens` only applies to speculative"),
    ],
)
def test_bad_speculative_arguments_are_refused(pair, kwargs, message):
    model, draft = pair
    drafts = {
        "draft": draft,
        "other_vocabulary": TransformerLM(LMConfig(vocab_size=11, block_size=48, n_layer=1, n_head=2, n_embd=8)),
        "shorter_context": TransformerLM(LMConfig(vocab_size=13, block_size=24, n_layer=1, n_head=2, n_embd=8)),
    }
    kwargs = {"draft_model": "draft", **kwargs}
    kwargs["draft_model"] = drafts.get(kwargs["draft_model"])
    with pytest.raises(ValueError, match=message):
        generate(model, [[1, 2]], max_new_tokens=4, **kwargs)
