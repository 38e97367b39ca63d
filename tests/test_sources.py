
import pytest
import tensorflow_datasets as tfds

from experiments.benchmarks.common import SHARED_DATA
from tf_lm.data import Corpus, read_source


def test_builtin_pydoc_is_the_default_and_splits_contiguously():
    from pydoc_data.topics import topics

    corpus = read_source()
    assert corpus.name == "builtin:pydoc"
    text = "".join(topics[key] for key in sorted(topics))
    assert corpus.train + corpus.validation == text
    assert len(corpus.train) == int(len(text) * 0.9)
    assert read_source("builtin:pydoc") == corpus  # deterministic


def test_text_glob_joins_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("BBBB\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("AAAA\n", encoding="utf-8")
    (tmp_path / "c.md").write_text("not matched", encoding="utf-8")
    (tmp_path / "d.txt").mkdir()  # a directory matching the glob is not a file to read
    corpus = read_source(f"text:{tmp_path}/*.txt", validation_fraction=0.2)
    assert corpus == Corpus(train="AAAA\nBBB", validation="B\n", name=f"text:{tmp_path}/*.txt")


def test_text_single_file_keeps_unicode(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("naïve café — “quotes”\n" * 10, encoding="utf-8")
    corpus = read_source(f"text:{path}", validation_fraction=0.5)
    assert corpus.train + corpus.validation == path.read_text(encoding="utf-8")
    assert "Corpus(name=" in repr(corpus) and "chars" in repr(corpus)


@pytest.mark.parametrize(
    "source, error, match",
    [
        ("text:/no/such/dir/*.txt", FileNotFoundError, r"No files match 'text:/no/such/dir/\*.txt'"),
        ("http://example.com/x.txt", ValueError, r"Unknown data source 'http://example.com/x.txt'.*builtin:pydoc"),
        ("shakespeare.txt", ValueError, r"Unknown data source 'shakespeare.txt'.*text:"),
        ("builtin:wikipedia", ValueError, r"Unknown builtin corpus in 'builtin:wikipedia'.*pydoc"),
        ("tfds:no_such_dataset_xyz", ValueError, r"Unknown TFDS dataset in 'tfds:no_such_dataset_xyz'"),
    ],
)
def test_bad_sources_name_the_input(source, error, match):
    with pytest.raises(error, match=match):
        read_source(source)


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"text:.*empty.txt' is empty"):
        read_source(f"text:{tmp_path}/empty.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt .* not UTF-8"):
        read_source(f"text:{tmp_path}/latin1.txt")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.1"])
def test_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        read_source(validation_fraction=fraction)


def test_tfds_reads_the_text_feature_of_each_split(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        corpus = read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path))
    documents = corpus.train.split("\n\n")
    assert len(documents) == 3
    assert all(10 <= len(doc) < 20 and set(doc) <= set(" abcdefghij") for doc in documents)
    assert corpus.validation == corpus.train  # the mock yields the same examples for every split
    assert corpus.name == "tfds:tiny_shakespeare"


def test_tfds_missing_text_feature(tmp_path):
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(ValueError, match=r"'tiny_shakespeare' has no feature 'body'.*tfds_text_key.*'text'"):
            read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_text_key="body")


def test_tfds_failed_download_is_one_sentence(tmp_path, monkeypatch):
    from tensorflow_datasets.core.download import downloader

    default_retries = downloader.MAX_RETRIES

    def offline(self, *args, **kwargs):
        # Offline, TFDS's own 10 retries would take minutes before this error; the call lowers them.
        assert downloader.MAX_RETRIES == 2
        raise ConnectionError("Failed to resolve 'raw.githubusercontent.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(FileNotFoundError) as info:
        read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path))
    message = str(info.value)
    assert "'tiny_shakespeare'" in message and "could not be downloaded" in message
    assert "tfds_data_dir" in message and "tfds_manual_dir" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # TFDS's traceback stays out
    assert downloader.MAX_RETRIES == default_retries


def test_tfds_tiny_shakespeare_prepares_offline_from_manual_dir(tmp_path):
    manual_dir = SHARED_DATA / "tinyshakespeare"
    full = (manual_dir / "input.txt").read_text(encoding="utf-8")
    corpus = read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_manual_dir=str(manual_dir))
    assert full.startswith(corpus.train) and corpus.validation in full
    assert len(corpus.train) > 10 * len(corpus.validation) > 0
    # Prepared once, it loads with no manual_dir at all.
    assert read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path)) == corpus
    # A validation split the dataset lacks falls back to the last fraction of the train text.
    carved = read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_validation_split="dev")
    assert carved.train + carved.validation == corpus.train
    with pytest.raises(ValueError, match=r"no split 'dev'.*tfds_train_split"):
        read_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_train_split="dev")
