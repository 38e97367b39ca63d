import os

import numpy as np
import pytest
import tensorflow as tf

from tf_lm.data import CharTokenizer, Corpus, encode_corpus, lm_datasets

BLOCK = 8


def positional_text(n: int, first: int = 0x100) -> str:
    """n distinct characters in code point order, so a CharTokenizer maps the character at position i to id i."""
    return "".join(chr(first + i) for i in range(n))


@pytest.fixture
def corpus():
    # Train ids are 0..400 (401 tokens: windows of 8 + 1 start at 0..392); validation ids are 401..500.
    text = positional_text(501)
    return Corpus(train=text[:401], validation=text[401:], name="positional")


@pytest.fixture
def tokenizer(corpus):
    return CharTokenizer.from_text(corpus.train + corpus.validation)


def take(dataset, n):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


def starts_of(batches):
    return [int(row[0]) for x, _ in batches for row in x]


def test_train_windows_are_contiguous_and_shifted_by_one(corpus, tokenizer):
    train, _ = lm_datasets(corpus, tokenizer, BLOCK, 4)
    for x, y in take(train, 30):
        assert x.dtype == np.int32 and x.shape == y.shape == (4, BLOCK)
        np.testing.assert_array_equal(x, x[:, :1] + np.arange(BLOCK))  # ids are positions: one contiguous slice
        np.testing.assert_array_equal(y, x + 1)  # targets are the next tokens
        assert (y <= 400).all()  # never reads past the train split


def test_windows_start_anywhere_independently_and_uniformly(corpus, tokenizer):
    train, _ = lm_datasets(corpus, tokenizer, BLOCK, 16, seed=3)
    starts = np.array(starts_of(take(train, 250)))  # 4000 draws over the 393 starts 0..392
    counts = np.bincount(starts, minlength=393)
    assert len(counts) == 393  # never a window past the split's last id
    assert (counts > 0).all()  # every start, 392 (ending on the last id) included, at every offset mod BLOCK
    chi2 = ((counts - 4000 / 393) ** 2 / (4000 / 393)).sum()
    assert 300 < chi2 < 500  # 392 degrees of freedom: uniform, neither lumpy nor suspiciously even
    first = starts_of(take(train, 1))
    assert len({s % BLOCK for s in first}) > 1  # windows of one batch overlap freely, unlike a non-overlapping tiling


def test_seed_makes_batches_reproducible(corpus, tokenizer):
    first = starts_of(take(lm_datasets(corpus, tokenizer, BLOCK, 4, seed=1)[0], 20))
    again = starts_of(take(lm_datasets(corpus, tokenizer, BLOCK, 4, seed=1)[0], 20))
    other = starts_of(take(lm_datasets(corpus, tokenizer, BLOCK, 4, seed=2)[0], 20))
    assert first == again
    assert first != other


@pytest.mark.parametrize("start_step", [1, 7, 12, 25])
def test_start_step_resumes_the_uninterrupted_stream(corpus, tokenizer, start_step):
    uninterrupted = take(lm_datasets(corpus, tokenizer, BLOCK, 4, seed=5)[0], start_step + 6)
    resumed = take(lm_datasets(corpus, tokenizer, BLOCK, 4, seed=5, start_step=start_step)[0], 6)
    for (x, y), (rx, ry) in zip(uninterrupted[start_step:], resumed):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)


def test_start_step_skips_in_constant_time(corpus, tokenizer):
    far = 10**12  # iterating this many batches would never finish; computing the position is O(1)
    x, y = take(lm_datasets(corpus, tokenizer, BLOCK, 4, start_step=far)[0], 1)[0]
    np.testing.assert_array_equal(y, x + 1)


@pytest.mark.parametrize("pipelines, pipeline_id, replicas", [(1, 0, 2), (2, 1, 2), (2, 1, 4)])
def test_start_step_counts_global_steps_under_every_input_context(corpus, tokenizer, pipelines, pipeline_id, replicas):
    # (1, 0, 2) is MirroredStrategy's shape (one pipeline feeds two replicas: two batches per global step);
    # (2, 1, 2) and (2, 1, 4) are the second worker of MultiWorkerMirroredStrategy with one or two replicas each.
    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=replicas)
    per_step = replicas // pipelines
    uninterrupted = take(lm_datasets(corpus, tokenizer, BLOCK, 8, seed=3, input_context=context)[0], per_step * 9)
    resumed = take(lm_datasets(corpus, tokenizer, BLOCK, 8, seed=3, start_step=5, input_context=context)[0],
                   per_step * 4)
    assert starts_of(resumed) == starts_of(uninterrupted[per_step * 5:])


def test_validation_covers_the_split_once(corpus, tokenizer):
    _, validation = lm_datasets(corpus, tokenizer, BLOCK, 5)
    batches = take(validation, 100)
    assert [len(x) for x, _ in batches] == [5, 5, 2]  # 100 ids -> 12 full windows, the partial 13th dropped
    inputs = np.concatenate([x for x, _ in batches])
    targets = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(inputs.reshape(-1), np.arange(401, 401 + 12 * BLOCK))
    np.testing.assert_array_equal(targets, inputs + 1)


def test_input_context_shards_are_disjoint_rows_of_the_global_batch(corpus, tokenizer):
    # MultiWorkerMirroredStrategy's shape: two input pipelines (workers), one replica each.
    unsharded = take(lm_datasets(corpus, tokenizer, BLOCK, 8, seed=4)[0], 5)
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        train, validation = lm_datasets(corpus, tokenizer, BLOCK, 8, seed=4, input_context=context)
        batches = take(train, 5)
        assert all(x.shape == y.shape == (4, BLOCK) for x, y in batches)  # the per-replica batch
        shards.append((batches, starts_of(take(validation, 100))))
    (train_a, val_a), (train_b, val_b) = shards
    for (x, y), (xa, ya), (xb, yb) in zip(unsharded, train_a, train_b):
        np.testing.assert_array_equal(x, np.concatenate([xa, xb]))  # rows 0..3 and 4..7 of the same global batch
        np.testing.assert_array_equal(y, np.concatenate([ya, yb]))
    assert not set(val_a) & set(val_b)
    assert sorted(val_a + val_b) == [401 + BLOCK * k for k in range(12)]


def test_one_pipeline_feeding_two_replicas_yields_the_whole_global_batch(corpus, tokenizer):
    # MirroredStrategy's shape: one input pipeline, two replicas, so each global step takes two per-replica batches.
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    per_replica = take(lm_datasets(corpus, tokenizer, BLOCK, 8, seed=4, input_context=context)[0], 10)
    unsharded = take(lm_datasets(corpus, tokenizer, BLOCK, 8, seed=4)[0], 5)
    assert all(x.shape == (4, BLOCK) for x, _ in per_replica)
    assert starts_of(per_replica) == starts_of(unsharded)


def test_distribute_datasets_from_function(corpus, tokenizer):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    dataset = strategy.distribute_datasets_from_function(
        lambda context: lm_datasets(corpus, tokenizer, BLOCK, 4, input_context=context)[0]
    )
    x, y = next(iter(dataset))
    assert x.shape == (4, BLOCK)
    np.testing.assert_array_equal(y, x + 1)
    unsharded = take(lm_datasets(corpus, tokenizer, BLOCK, 4)[0], 1)[0][0]
    np.testing.assert_array_equal(x, unsharded)  # one pipeline: the same stream as without a context


def test_model_fit_consumes_the_datasets(corpus, tokenizer):
    import keras

    train, validation = lm_datasets(corpus, tokenizer, BLOCK, 4)
    vocab = tokenizer.vocab_size
    model = keras.Sequential([keras.layers.Embedding(vocab, 4), keras.layers.Dense(vocab)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(train, steps_per_epoch=2, epochs=1, validation_data=validation, shuffle=False, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])


class CountingTokenizer(CharTokenizer):
    calls = 0

    def encode_array(self, text):
        type(self).calls += 1
        return super().encode_array(text)


def test_token_cache_skips_tokenising_the_second_time(corpus, tmp_path):
    tokenizer = CountingTokenizer(sorted(set(corpus.train + corpus.validation)))
    cache = str(tmp_path / "cache")
    first = take(lm_datasets(corpus, tokenizer, BLOCK, 4, cache_dir=cache)[0], 3)
    assert CountingTokenizer.calls == 2  # train and validation
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and all(f.endswith(".npy") for f in files)  # no temporary files left
    second = take(lm_datasets(corpus, tokenizer, BLOCK, 4, cache_dir=cache)[0], 3)
    assert CountingTokenizer.calls == 2
    for (x, _), (x2, _) in zip(first, second):
        np.testing.assert_array_equal(x, x2)
    # A different vocabulary, or different text, is a different key: tokenised afresh, never served stale ids.
    other = CountingTokenizer(sorted(set(corpus.train + corpus.validation + "!")))
    encode_corpus(corpus, other, cache)
    encode_corpus(Corpus(corpus.train[1:], corpus.validation, corpus.name), tokenizer, cache)
    assert CountingTokenizer.calls == 5  # 2 more for the new vocabulary, 1 for the edited train text
    assert len(os.listdir(cache)) == 5


def test_encode_corpus_uses_the_tokenizer_interface(corpus):
    class ListTokenizer:  # only the public interface: encode -> list[int] and fingerprint
        fingerprint = "list"

        def encode(self, text):
            return [ord(c) - 0x100 for c in text]

    ids = encode_corpus(corpus, ListTokenizer())
    assert ids["train"].dtype == np.int32
    np.testing.assert_array_equal(ids["validation"], np.arange(401, 501))


@pytest.mark.parametrize(
    "train_len, validation_len, split",
    [(BLOCK, 100, "train"), (100, BLOCK, "validation")],
)
def test_split_shorter_than_a_window_is_rejected(train_len, validation_len, split):
    text = positional_text(train_len + validation_len)
    corpus = Corpus(text[:train_len], text[train_len:], name="text:short.txt")
    tokenizer = CharTokenizer.from_text(text)
    message = rf"The {split} split of 'text:short.txt' has {BLOCK} tokens.*smaller block_size"
    with pytest.raises(ValueError, match=message):
        lm_datasets(corpus, tokenizer, BLOCK, 2)


def test_bad_arguments(corpus, tokenizer):
    with pytest.raises(ValueError, match="block_size=0"):
        lm_datasets(corpus, tokenizer, 0, 2)
    with pytest.raises(ValueError, match="batch_size=2.0"):
        lm_datasets(corpus, tokenizer, BLOCK, 2.0)
    with pytest.raises(ValueError, match="start_step=-1"):
        lm_datasets(corpus, tokenizer, BLOCK, 2, start_step=-1)
    with pytest.raises(ValueError, match=r"\['validation_fraction'\].*drop them"):
        lm_datasets(corpus, tokenizer, BLOCK, 2, validation_fraction=0.2)


def test_source_string_and_unknown_characters(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcdefgh" * 20, encoding="utf-8")
    tokenizer = CharTokenizer.from_text("abcdefg")
    with pytest.raises(ValueError, match=r"'h'.*unknown_token"):
        lm_datasets(f"text:{path}", tokenizer, BLOCK, 2)
    tokenizer = CharTokenizer.from_text("abcdefgh")
    train, validation = lm_datasets(f"text:{path}", tokenizer, BLOCK, 2, validation_fraction=0.25)
    x, y = take(train, 1)[0]
    assert tokenizer.decode(x[0]) in "abcdefgh" * 20
    assert sum(len(x) for x, _ in take(validation, 100)) == (40 - 1) // BLOCK
