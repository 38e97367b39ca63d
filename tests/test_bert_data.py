"""tf_lm.bert.data: TSV/CSV and TFDS inputs, every bad input, and per-batch (and bucketed) padding."""

import os

import numpy as np
import pytest
import tensorflow as tf

from experiments.benchmarks.common import SHARED_DATA
from tf_lm.bert import data

SST2 = SHARED_DATA / "sst2"


def whitespace_tokenizer(texts, truncation=True, max_length=512):
    """A stand-in for a Hugging Face tokenizer: [CLS]=1, words=len(word)+2, [SEP]=2."""
    ids = [[1] + [len(word) + 2 for word in text.split()][: max_length - 2] + [2] for text in texts]
    return {"input_ids": ids}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_tsv_with_header(tmp_path):
    path = write(tmp_path / "train.tsv", "label\tsentence\n1\ta fine film \n0\ta dull mess \n")
    result = data.read_table(path)
    assert result.texts == ["a fine film ", "a dull mess "]
    np.testing.assert_array_equal(result.labels, [1, 0])
    assert result.source == "train.tsv"


def test_read_csv_with_quotes_and_named_columns(tmp_path):
    path = write(tmp_path / "reviews.csv", 'id,review,stars\n7,"good, really good",2\n8,"""meh""",0\n')
    result = data.read_table(path, text_key="review", label_key="stars", max_examples=1)
    assert result.texts == ["good, really good"]
    np.testing.assert_array_equal(result.labels, [2])


@pytest.mark.parametrize("header", ["", "text\tlabel\n"])
def test_read_by_column_index_with_or_without_header(tmp_path, header):
    path = write(tmp_path / "plain.tsv", header + "great\t1\nawful\t0\n")
    result = data.read_table(path, text_key="0", label_key="1")
    assert result.texts == ["great", "awful"]
    np.testing.assert_array_equal(result.labels, [1, 0])


def test_read_sst2_dev():
    result = data.read_table(str(SST2 / "dev.tsv"))
    assert len(result) == 872
    assert np.bincount(result.labels).tolist() == [428, 444]


@pytest.mark.parametrize(
    "name, text, kwargs, error, match",
    [
        ("empty.tsv", "", {}, ValueError, "is empty"),
        ("header.tsv", "sentence\tlabel\n", {}, ValueError, "no examples"),
        ("notext.tsv", "text\tlabel\nfine\t1\n", {}, ValueError, "no text column 'sentence'"),
        ("nolabel.tsv", "sentence\tstars\nfine\t1\n", {}, ValueError, "no label column 'label'"),
        ("word.tsv", "sentence\tlabel\nfine\tpositive\n", {}, ValueError, "not an integer"),
        ("short.tsv", "sentence\tlabel\nfine\n", {}, ValueError, "fewer than"),
        ("data.json", "{}", {}, ValueError, ".tsv or .csv"),
        ("dashes.tsv", "sentence\tlabel\nfine\t1\nodd\t--1\n", {}, ValueError, r"dashes.tsv:3: the label '--1'"),
        ("huge.csv", 'sentence,label\nfine,1\n"' + "x" * 200_000 + '",0\n', {}, ValueError,
         r"huge.csv:3: field larger than field limit"),
    ],
)
def test_read_table_rejects_bad_files(tmp_path, name, text, kwargs, error, match):
    path = write(tmp_path / name, text)
    with pytest.raises(error, match=match):
        data.read_table(path, **kwargs)


@pytest.mark.parametrize("max_examples", [0, -1])
def test_max_examples_below_one_is_refused(tmp_path, max_examples):
    """A count below 1 would have been read as "all but the last one" (a slice) or "all" (TFDS's `take`)."""
    path = write(tmp_path / "t.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    match = f"^`max_examples` must be >= 1 .*Received: `max_examples={max_examples}`$"
    with pytest.raises(ValueError, match=match):
        data.read_table(path, max_examples=max_examples)
    with pytest.raises(ValueError, match=match):
        data.load_tfds("glue/sst2", "train", max_examples=max_examples)


def test_read_table_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No data file"):
        data.read_table(str(tmp_path / "absent.tsv"))


def test_check_labels_names_the_bad_example(tmp_path):
    result = data.read_table(write(tmp_path / "t.tsv", "sentence\tlabel\na\t0\nb\t1\nc\t2\n"))
    data.check_labels(result, num_labels=3)
    with pytest.raises(ValueError, match="t.tsv: example 2 has label 2, outside the 2 classes"):
        data.check_labels(result, num_labels=2)


def test_load_tfds_glue_sst2_from_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        result = data.load_tfds("glue/sst2", "train", max_examples=10)
        with pytest.raises(ValueError, match="no feature 'text'.*Pass `text_key=<feature name>`"):
            data.load_tfds("glue/sst2", "train", text_key="text")
    assert len(result) == 10 and all(isinstance(text, str) for text in result.texts)
    assert result.label_names == ["negative", "positive"]
    assert set(result.labels.tolist()) <= {0, 1}
    assert result.source == "tfds:glue/sst2[train]"


def test_load_tfds_any_text_dataset_with_keys_from_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5):
        result = data.load_tfds("imdb_reviews", "test", text_key="text", label_key="label")
    assert len(result) == 5 and result.label_names == ["neg", "pos"]


def test_load_tfds_unknown_dataset_is_one_sentence():
    with pytest.raises(ValueError, match=r"Unknown TFDS dataset in 'tfds:no_such_dataset_xyz\[train\]'"):
        data.load_tfds("no_such_dataset_xyz", "train")


def test_load_tfds_offline_fails_in_seconds_and_leaves_no_partial_files(tmp_path, monkeypatch):
    import socket
    import time

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="'glue/sst2' is not prepared .* pass `tfds_data_dir="):
        data.load_tfds("glue/sst2", "train", tfds_data_dir=str(tmp_path / "tensorflow_datasets"))
    assert time.perf_counter() - start < 20, "TFDS retried its downloads for minutes"
    assert os.listdir(tmp_path) == [], "partial download or dataset directories, or the new data_dir, were left"


def test_encode_truncates_to_max_length():
    ids = data.encode(whitespace_tokenizer, ["a b c d e f", "a"], max_length=4)
    assert [row.tolist() for row in ids] == [[1, 3, 3, 2], [1, 3, 2]]
    assert ids[0].dtype == np.int32


def random_sequences(n, low=2, high=20, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = [rng.integers(5, 100, size=rng.integers(low, high + 1)).astype(np.int32) for _ in range(n)]
    return token_ids, rng.integers(0, 2, size=n)


def unpad(batches):
    """(sequence, label) pairs of the real rows, to check every example arrives exactly once."""
    seen = []
    for features, labels, weights in batches:
        for ids, mask, label, weight in zip(features["input_ids"].numpy(), features["attention_mask"].numpy(),
                                            labels.numpy(), weights.numpy()):
            if weight > 0:
                seen.append((tuple(ids[mask == 1]), int(label)))
    return sorted(seen)


def test_dynamic_padding_pads_each_batch_to_its_longest():
    token_ids, labels = random_sequences(23)
    batches = list(data.make_dataset(token_ids, labels, batch_size=5))
    assert len(batches) == data.count_batches(token_ids, 5) == 5
    for i, (features, _labels, weights) in enumerate(batches):
        lengths = [len(row) for row in token_ids[5 * i: 5 * i + 5]]
        assert features["input_ids"].shape == (len(lengths), max(lengths))
        np.testing.assert_array_equal(features["attention_mask"].numpy().sum(1), lengths)
        np.testing.assert_array_equal(features["input_ids"].numpy()[features["attention_mask"].numpy() == 0], 0)
        np.testing.assert_allclose(weights.numpy().sum(), 1.0, rtol=1e-6)
    widths = {batch[0]["input_ids"].shape[1] for batch in batches}
    assert len(widths) > 1, "all batches came out the same width: padding is not per batch"
    assert unpad(batches) == sorted((tuple(row), int(y)) for row, y in zip(token_ids, labels))


def test_bucketed_batches_are_full_and_padded_to_their_bucket():
    token_ids, labels = random_sequences(40)
    widths = (6, 12, 20)
    dataset = data.make_dataset(token_ids, labels, batch_size=8, shuffle=True, seed=3, bucket_widths=widths, pad_id=9)
    batches = list(dataset)
    assert len(batches) == data.count_batches(token_ids, 8, widths)
    for features, _, weights in batches:
        width = features["input_ids"].shape[1]
        assert features["input_ids"].shape[0] == 8 and width in widths
        lengths = features["attention_mask"].numpy().sum(1)[weights.numpy() > 0]
        assert lengths.max() <= width and (width == widths[0] or lengths.min() > widths[widths.index(width) - 1])
        np.testing.assert_allclose(weights.numpy().sum(), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(features["input_ids"].numpy()[features["attention_mask"].numpy() == 0], 9)
    assert unpad(batches) == sorted((tuple(row), int(y)) for row, y in zip(token_ids, labels))
    second_epoch = [b[1].numpy().tolist() for b in dataset]
    assert second_epoch != [b[1].numpy().tolist() for b in batches], "shuffle must differ between epochs"


@pytest.mark.parametrize("widths", [(12, 6, 20), (6, 12)])
def test_bucket_widths_must_ascend_and_cover(widths):
    token_ids, labels = random_sequences(10)
    with pytest.raises(ValueError, match="bucket_widths"):
        data.make_dataset(token_ids, labels, batch_size=4, bucket_widths=widths)


def test_dataset_elements_feed_a_model_signature():
    token_ids, labels = random_sequences(4)
    spec = data.make_dataset(token_ids, labels, batch_size=2).element_spec
    assert spec[0]["input_ids"].dtype == tf.int32 and spec[1].dtype == tf.int32 and spec[2].dtype == tf.float32


def test_read_table_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffsentence,label\nfine,1\n".encode())
    assert data.read_table(str(path)).texts == ["fine"]


def test_read_table_names_the_line_of_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("sentence\tlabel\nfine\t1\ncaf\xe9\t0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.tsv:3: byte 0xe9 is not UTF-8"):
        data.read_table(str(path))


@pytest.mark.parametrize("name, text", [
    ("blank.tsv", "sentence\tlabel\nfine\t1\n\n\nodd\tpositive\n"),
    ("multi.csv", 'sentence,label\n"a review\nof three\nlines",1\n"odd",positive\n'),
    ("crlf.csv", 'sentence,label\r\n"two\r\nlines",1\r\n\r\nodd,positive\r\n'),
])
def test_read_table_names_the_physical_line_after_blank_lines_and_multiline_fields(tmp_path, name, text):
    """The line an editor shows: blank lines and the lines inside a quoted field count."""
    path = tmp_path / name
    path.write_bytes(text.encode())
    with pytest.raises(ValueError, match=rf"{name}:5: the label 'positive' is not an integer"):
        data.read_table(str(path))
    short = tmp_path / f"short-{name}"
    short.write_bytes(text.replace("odd\tpositive", "odd").replace('"odd",positive', "odd").replace(
        "odd,positive", "odd").encode())
    with pytest.raises(ValueError, match=rf"short-{name}:5 has 1 fields"):
        data.read_table(str(short))


def test_check_labels_names_a_negative_label(tmp_path):
    result = data.read_table(write(tmp_path / "t.tsv", "sentence\tlabel\na\t0\nb\t-1\n"))
    with pytest.raises(ValueError, match=r"t.tsv: example 1 has label -1, outside the 2 classes \[0, 1\]"):
        data.check_labels(result, num_labels=2)
