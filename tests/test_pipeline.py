import weakref

import numpy as np
import pytest
import tensorflow as tf

from tf_lm.data import TokenStore, contiguous_windows, lm_datasets, prepare_store
from tf_lm.data.pipeline import damaged_store_errors
from tf_lm.data.store import DamagedStoreError

BLOCK = 8


def positional_text(n: int, first: int = 0x100) -> str:
    """n distinct characters in code point order, so a CharTokenizer maps the character at position i to id i."""
    return "".join(chr(first + i) for i in range(n))


def positional_store(directory, train_len: int, validation_len: int) -> TokenStore:
    """A one-document store whose train ids are 0..train_len-1 and validation ids the next validation_len, then
    the end-of-text id. Its characters are two UTF-8 bytes each, so the byte split lands on train_len exactly."""
    path = directory / "positional.txt"
    path.write_text(positional_text(train_len + validation_len), encoding="utf-8")
    fraction = (validation_len + 0.25) / (train_len + validation_len)
    return prepare_store(f"text:{path}", str(directory / "store"), validation_fraction=fraction)


@pytest.fixture
def store(tmp_path):
    # Train ids are 0..400 (401 tokens: windows of 8 + 1 start at 0..392); validation ids are 401..500, then 501.
    return positional_store(tmp_path, 401, 100)


def take(dataset, n):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(n)]


def starts_of(batches):
    return [int(row[0]) for x, _ in batches for row in x]


def test_train_windows_are_contiguous_and_shifted_by_one(store):
    train, _ = lm_datasets(store, BLOCK, 4)
    for x, y in take(train, 30):
        assert x.dtype == np.int32 and x.shape == y.shape == (4, BLOCK)
        np.testing.assert_array_equal(x, x[:, :1] + np.arange(BLOCK))  # ids are positions: one contiguous slice
        np.testing.assert_array_equal(y, x + 1)  # targets are the next tokens
        assert (y <= 400).all()  # never reads past the train split


def test_windows_start_anywhere_independently_and_uniformly(store):
    train, _ = lm_datasets(store, BLOCK, 16, seed=3)
    starts = np.array(starts_of(take(train, 250)))  # 4000 draws over the 393 starts 0..392
    counts = np.bincount(starts, minlength=393)
    assert len(counts) == 393  # never a window past the split's last id
    assert (counts > 0).all()  # every start, 392 (ending on the last id) included, at every offset mod BLOCK
    chi2 = ((counts - 4000 / 393) ** 2 / (4000 / 393)).sum()
    assert 300 < chi2 < 500  # 392 degrees of freedom: uniform, neither lumpy nor suspiciously even
    first = starts_of(take(train, 1))
    assert len({s % BLOCK for s in first}) > 1  # windows of one batch overlap freely, unlike a non-overlapping tiling


def test_seed_makes_batches_reproducible(store):
    first = starts_of(take(lm_datasets(store, BLOCK, 4, seed=1)[0], 20))
    again = starts_of(take(lm_datasets(store, BLOCK, 4, seed=1)[0], 20))
    other = starts_of(take(lm_datasets(store, BLOCK, 4, seed=2)[0], 20))
    assert first == again
    assert first != other


@pytest.mark.parametrize("start_step", [1, 7, 12, 25])
def test_start_step_resumes_the_uninterrupted_stream(store, start_step):
    uninterrupted = take(lm_datasets(store, BLOCK, 4, seed=5)[0], start_step + 6)
    resumed = take(lm_datasets(store, BLOCK, 4, seed=5, start_step=start_step)[0], 6)
    for (x, y), (rx, ry) in zip(uninterrupted[start_step:], resumed):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)


def test_start_step_skips_in_constant_time(store):
    far = 10**12  # iterating this many batches would never finish; computing the position is O(1)
    x, y = take(lm_datasets(store, BLOCK, 4, start_step=far)[0], 1)[0]
    np.testing.assert_array_equal(y, x + 1)


@pytest.mark.parametrize("pipelines, pipeline_id, replicas", [(1, 0, 2), (2, 1, 2), (2, 1, 4)])
def test_start_step_counts_global_steps_under_every_input_context(store, pipelines, pipeline_id, replicas):
    # (1, 0, 2) is MirroredStrategy's shape (one pipeline feeds two replicas: two batches per global step);
    # (2, 1, 2) and (2, 1, 4) are the second worker of MultiWorkerMirroredStrategy with one or two replicas each.
    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=replicas)
    per_step = replicas // pipelines
    uninterrupted = take(lm_datasets(store, BLOCK, 8, seed=3, input_context=context)[0], per_step * 9)
    resumed = take(lm_datasets(store, BLOCK, 8, seed=3, start_step=5, input_context=context)[0],
                   per_step * 4)
    assert starts_of(resumed) == starts_of(uninterrupted[per_step * 5:])


def test_validation_covers_the_split_once(store):
    _, validation = lm_datasets(store, BLOCK, 5)
    batches = take(validation, 100)
    assert [len(x) for x, _ in batches] == [5, 5, 2]  # 100 ids -> 12 full windows, the partial 13th dropped
    inputs = np.concatenate([x for x, _ in batches])
    targets = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(inputs.reshape(-1), np.arange(401, 401 + 12 * BLOCK))  # 101 ids: 12 windows
    np.testing.assert_array_equal(targets, inputs + 1)


def test_validation_of_a_whole_number_of_windows_drops_the_last_one(tmp_path):
    # 95 ids + end-of-text = 96 = 12 * BLOCK tokens: the 12th window's last target would be a 97th token.
    store = positional_store(tmp_path, 401, 95)
    assert store.num_tokens("validation") == 12 * BLOCK
    batches = take(contiguous_windows(store, "validation", BLOCK, 5), 100)
    assert [len(x) for x, _ in batches] == [5, 5, 1]
    inputs = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(inputs.reshape(-1), np.arange(401, 401 + 11 * BLOCK))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), inputs + 1)


@pytest.mark.parametrize("replicas", [2, 4])
def test_input_context_shards_are_disjoint_rows_of_the_global_batch(store, replicas):
    # MultiWorkerMirroredStrategy's shape: two input pipelines (workers), with one or two replicas each.
    per_step, per_replica = replicas // 2, 8 // replicas  # batches each pipeline yields per global step, their rows
    unsharded = take(lm_datasets(store, BLOCK, 8, seed=4)[0], 5)
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=replicas)
        train, validation = lm_datasets(store, BLOCK, 8, seed=4, input_context=context)
        batches = take(train, 5 * per_step)
        assert all(x.shape == y.shape == (per_replica, BLOCK) for x, y in batches)  # the per-replica batch
        shards.append((batches, starts_of(take(validation, 100))))
    (train_a, val_a), (train_b, val_b) = shards
    for step, (x, y) in enumerate(unsharded):
        rows = train_a[step * per_step:(step + 1) * per_step] + train_b[step * per_step:(step + 1) * per_step]
        # pipeline 0 holds the first half of the rows of the same global batch, pipeline 1 the second half
        np.testing.assert_array_equal(x, np.concatenate([xs for xs, _ in rows]))
        np.testing.assert_array_equal(y, np.concatenate([ys for _, ys in rows]))
    assert not set(val_a) & set(val_b)
    assert sorted(val_a + val_b) == [401 + BLOCK * k for k in range(12)]


def test_one_pipeline_feeding_two_replicas_yields_the_whole_global_batch(store):
    # MirroredStrategy's shape: one input pipeline, two replicas, so each global step takes two per-replica batches.
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    per_replica = take(lm_datasets(store, BLOCK, 8, seed=4, input_context=context)[0], 10)
    unsharded = take(lm_datasets(store, BLOCK, 8, seed=4)[0], 5)
    assert all(x.shape == (4, BLOCK) for x, _ in per_replica)
    assert starts_of(per_replica) == starts_of(unsharded)


def test_distribute_datasets_from_function(store):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    dataset = strategy.distribute_datasets_from_function(
        lambda context: lm_datasets(store, BLOCK, 4, input_context=context)[0]
    )
    x, y = next(iter(dataset))
    assert x.shape == (4, BLOCK)
    np.testing.assert_array_equal(y, x + 1)
    unsharded = take(lm_datasets(store, BLOCK, 4)[0], 1)[0][0]
    np.testing.assert_array_equal(x, unsharded)  # one pipeline: the same stream as without a context


def test_model_fit_consumes_the_datasets(store):
    import keras

    train, validation = lm_datasets(store, BLOCK, 4)
    vocab = store.tokenizer.vocab_size
    model = keras.Sequential([keras.layers.Embedding(vocab, 4), keras.layers.Dense(vocab)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(train, steps_per_epoch=2, epochs=1, validation_data=validation, shuffle=False, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])


def test_store_batches_equal_the_in_memory_path(store):
    """The batch at (seed, step) is what the in-memory pipeline (ids in a tf.constant, tf.gather) gave."""
    ids = tf.constant(np.arange(401, dtype=np.int32))  # the train ids, as the old path held them
    for step in (0, 3, 10**9):
        x, y = take(lm_datasets(store, BLOCK, 4, seed=7, start_step=step)[0], 1)[0]
        starts = tf.random.stateless_uniform([4], tf.constant([7, step], tf.int64), minval=0, maxval=401 - BLOCK,
                                             dtype=tf.int64)
        windows = tf.gather(ids, starts[:, None] + tf.range(BLOCK + 1, dtype=tf.int64)[None, :]).numpy()
        np.testing.assert_array_equal(x, windows[:, :-1])
        np.testing.assert_array_equal(y, windows[:, 1:])


def test_contiguous_windows_of_the_train_split(store):
    inputs = np.concatenate([x for x, _ in take(contiguous_windows(store, "train", BLOCK, 16), 100)])
    np.testing.assert_array_equal(inputs.reshape(-1), np.arange(50 * BLOCK))  # (401 - 1) // 8 = 50 windows
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        contiguous_windows(store, "test", BLOCK, 16)


@pytest.mark.parametrize(
    "train_len, validation_len, split",
    [(BLOCK, 100, "train"), (100, BLOCK - 1, "validation")],  # validation gains the end-of-text id: 8 tokens
)
def test_split_shorter_than_a_window_is_rejected(tmp_path, train_len, validation_len, split):
    store = positional_store(tmp_path, train_len, validation_len)
    message = rf"The {split} split of token store '.*store' \(from '.*'\) has {BLOCK} tokens.*block_size of a shorter"
    with pytest.raises(ValueError, match=message):
        lm_datasets(store, BLOCK, 2)


def test_bad_arguments(store, tmp_path):
    with pytest.raises(ValueError, match="block_size=0"):
        lm_datasets(store, 0, 2)
    with pytest.raises(ValueError, match="batch_size=2.0"):
        lm_datasets(store, BLOCK, 2.0)
    with pytest.raises(ValueError, match="start_step=-1"):
        lm_datasets(store, BLOCK, 2, start_step=-1)
    # Named as the function called and in backticks, which evaluate_lm turns into its --batch_size.
    with pytest.raises(ValueError, match=r"^contiguous_windows needs `batch_size` to be an integer >= 1. Received: "
                                         r"`batch_size=0`$"):
        contiguous_windows(store, "validation", BLOCK, 0)
    with pytest.raises(FileNotFoundError, match="No manifest.json in token store"):
        lm_datasets(str(tmp_path / "nowhere"), BLOCK, 2)


def test_store_directory_and_documents_crossing_windows(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(name * 30, encoding="utf-8")
    store = prepare_store(f"text:{tmp_path}/*.txt", str(tmp_path / "store"), validation_fraction=0.25)
    tokenizer = store.tokenizer
    train, validation = lm_datasets(str(tmp_path / "store"), BLOCK, 2)
    assert tokenizer.decode(np.concatenate([x[0] for x, _ in take(train, 50)])).count("<|endoftext|>") > 0
    # One of the three documents is held out whole: validation is c*30 <eot> = 31 ids -> 3 windows
    assert store.num_tokens("validation") == 31
    assert sum(len(x) for x, _ in take(validation, 100)) == (31 - 1) // BLOCK


def test_a_damaged_store_met_while_iterating_raises_its_own_one_line_error(store):
    shard = f"{store.directory}/validation-00000.bin"
    damaged = bytearray(open(shard, "rb").read())
    damaged[6:8] = (1000).to_bytes(2, "little")
    open(shard, "wb").write(bytes(damaged))
    validation = contiguous_windows(TokenStore(store.directory), "validation", BLOCK, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Traceback"):  # what TensorFlow makes of it
        list(validation)
    with pytest.raises(DamagedStoreError, match=r"^Token store '.*' is damaged: validation-00000.bin holds id 1000 "
                                                r"\(at position 3\), outside its tokenizer's 502 ids; [^\n]*$"):
        with damaged_store_errors():
            list(validation)
    with pytest.raises(tf.errors.InvalidArgumentError):  # any other failure is left as it is
        with damaged_store_errors():
            tf.debugging.assert_equal(1, 2)

    # The error keeps no frame holding the iterator, whose other reads are in flight: kept to the interpreter's
    # exit (in a reference cycle), it would be destroyed as Python finalizes and wait for them forever.
    def consume(held):
        iterator = iter(validation)
        held.append(weakref.ref(iterator))
        while True:
            next(iterator)

    held = []
    with pytest.raises(DamagedStoreError) as raised:  # held, as a script's exit status holds it to the end
        with damaged_store_errors():
            consume(held)
    assert held[0]() is None, raised
