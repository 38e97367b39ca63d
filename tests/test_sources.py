import pytest
import tensorflow_datasets as tfds

from experiments.benchmarks.common import SHARED_DATA
from tf_lm.data import open_source


def read(source, split, **kwargs):
    """The split's documents, as a reader of its chunks sees them (a cut document is one piece)."""
    documents, current = [], ""
    for chunk in source.chunks(split, **kwargs):
        current += chunk.text
        if chunk.ends_document:
            documents.append(current)
            current = ""
    return documents + ([current] if current else [])


def test_builtin_pydoc_is_the_default_one_document_per_topic_split_by_documents():
    from pydoc_data.topics import topics

    source = open_source()
    assert source.name == "builtin:pydoc"
    texts = [topics[key] for key in sorted(topics)]
    held_out = round(len(texts) * 0.1)
    assert read(source, "train") == texts[:-held_out] and read(source, "validation") == texts[-held_out:]
    total = sum(len(text.encode("utf-8")) for text in texts)
    validation_bytes = sum(len(text.encode("utf-8")) for text in texts[-held_out:])
    assert (source.split_bytes("train"), source.split_bytes("validation")) == (total - validation_bytes,
                                                                                validation_bytes)


@pytest.mark.parametrize("fraction, held_out", [(0.01, 1), (0.2, 1), (0.5, 2), (0.99, 3)])
def test_documents_are_held_out_whole_at_least_one_in_each_split(tmp_path, fraction, held_out):
    for name in "abcd":
        (tmp_path / f"{name}.txt").write_text(name * 10, encoding="utf-8")
    (tmp_path / "e.txt").write_text("", encoding="utf-8")  # holds no text, so it is not counted
    source = open_source(f"text:{tmp_path}/*.txt", validation_fraction=fraction)
    documents = [name * 10 for name in "abcd"]
    assert read(source, "train") == documents[:-held_out] and read(source, "validation") == documents[-held_out:]


def test_text_glob_reads_files_in_sorted_order_one_document_each(tmp_path):
    (tmp_path / "b.txt").write_text("BBBB\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("AAAA\n", encoding="utf-8")
    (tmp_path / "e.txt").write_text("", encoding="utf-8")  # an empty document ends nothing
    (tmp_path / "c.md").write_text("not matched", encoding="utf-8")
    (tmp_path / "d.txt").mkdir()  # a directory matching the glob is not a file to read
    source = open_source(f"text:{tmp_path}/*.txt", validation_fraction=0.2)
    chunks = list(source.chunks("train")) + list(source.chunks("validation"))
    assert [(c.text, c.ends_document) for c in chunks] == [("AAAA\n", True), ("BBBB\n", True)]


def test_single_file_splits_at_a_character_boundary_and_keeps_unicode(tmp_path):
    path = tmp_path / "poem.txt"
    text = "naïve café — “quotes”\n" * 10
    path.write_text(text, encoding="utf-8")
    for fraction in (0.1, 0.33, 0.5, 0.77):
        source = open_source(f"text:{path}", validation_fraction=fraction)
        train, validation = read(source, "train"), read(source, "validation")
        assert train[0] + validation[0] == text
        assert abs(len(train[0].encode("utf-8")) - len(text.encode("utf-8")) * (1 - fraction)) < 4


@pytest.mark.parametrize("text, fraction, empty", [("To be, or not to be.\n" * 20, 0.9999, "train"),
                                                   ("abcé", 0.1, "validation")])  # cut inside é: moved past it
def test_a_fraction_that_leaves_a_single_documents_split_empty_is_refused(tmp_path, text, fraction, empty):
    (tmp_path / "short.txt").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"`validation_fraction={fraction}` leaves the {empty} split of .* empty"):
        open_source(f"text:{tmp_path / 'short.txt'}", validation_fraction=fraction)


def test_chunks_are_bounded_cut_after_newlines_and_resume_from_any_end(tmp_path):
    path = tmp_path / "lines.txt"
    text = "".join(f"line {i} ünïcödé\n" for i in range(200)) + "x" * 300 + "é" * 100
    path.write_text(text, encoding="utf-8")
    source = open_source(f"text:{path}", validation_fraction=0.1)
    chunks = list(source.chunks("train", chunk_bytes=64))
    assert "".join(c.text for c in chunks) == read(source, "train")[0]
    assert all(c.size == len(c.text.encode("utf-8")) <= 64 for c in chunks)
    assert all(c.text.endswith("\n") for c in chunks[:-1] if "\n" in c.text)
    for k in (0, 5, len(chunks) // 2, len(chunks) - 2):
        assert list(source.chunks("train", start=chunks[k].end, chunk_bytes=64)) == chunks[k + 1:]
    with pytest.raises(ValueError, match="chunk_bytes"):
        next(source.chunks("train", chunk_bytes=2))


@pytest.mark.parametrize(
    "source, error, match",
    [
        ("text:/no/such/dir/*.txt", FileNotFoundError, r"No files match 'text:/no/such/dir/\*.txt'"),
        ("http://example.com/x.txt", ValueError, r"Unknown data source 'http://example.com/x.txt'.*builtin:pydoc"),
        ("shakespeare.txt", ValueError, r"Unknown data source 'shakespeare.txt'.*text:"),
        # A `dataset` that training or evaluation reads may name a prepared store too; a source never does.
        ("stores:runs/s", ValueError, r"^Unknown data source 'stores:runs/s'; use builtin:pydoc, text:<file or glob> "
                                      r"or tfds:<dataset name> \(or, to train or evaluate on a token store that is "
                                      r"prepared already, store:<dir>\)\.$"),
        ("store:runs/s", ValueError, r"^'store:runs/s' names a token store, which is prepared already: train or "
                                     r"evaluate on it as it is; prepare from a source: builtin:pydoc, "),
        ("builtin:wikipedia", ValueError, r"Unknown builtin corpus in 'builtin:wikipedia'.*pydoc"),
        ("tfds:no_such_dataset_xyz", ValueError, r"Unknown TFDS dataset in 'tfds:no_such_dataset_xyz'"),
        ("tfds:", ValueError, r"^'tfds:' names no TFDS dataset; use tfds:<name>"),
    ],
)
def test_bad_sources_name_the_input(source, error, match):
    with pytest.raises(error, match=match):
        open_source(source)


def test_a_directory_is_named_as_one_with_the_glob_of_its_files(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text\n", encoding="utf-8")
    for written in (f"{tmp_path}/corpus", f"{tmp_path}/corpus/"):
        with pytest.raises(FileNotFoundError) as error:
            open_source(f"text:{written}")
        assert str(error.value).startswith(f"'text:{written}' is a directory; name its files with a glob, e.g. "
                                           f"text:'{tmp_path}/corpus/*.txt' (quoted")


def test_a_path_naming_a_file_is_read_as_named_not_as_a_glob(tmp_path):
    (tmp_path / "notes[1].txt").write_text("the file named\n", encoding="utf-8")
    (tmp_path / "notes1.txt").write_text("the file the glob matches\n", encoding="utf-8")
    source = open_source(f"text:{tmp_path}/notes[1].txt")
    assert "".join(read(source, "train") + read(source, "validation")) == "the file named\n"
    source = open_source(f"text:{tmp_path}/notes[12].txt")  # names no file: a glob
    assert "".join(read(source, "train") + read(source, "validation")) == "the file the glob matches\n"


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffFirst file.\n".encode("utf-8"))
    (tmp_path / "b.txt").write_bytes("\ufeffSecond \ufeff stays inside.\n".encode("utf-8"))
    source = open_source(f"text:{tmp_path}/*.txt", validation_fraction=0.5)
    texts = ["".join(chunk.text for chunk in source.chunks(split, chunk_bytes=8)) for split in ("train", "validation")]
    assert texts == ["First file.\n", "Second \ufeff stays inside.\n"]


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"text:.*empty.txt' is empty"):
        open_source(f"text:{tmp_path}/empty.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt \(from .*\) is not UTF-8"):
        list(open_source(f"text:{tmp_path}/latin1.txt", validation_fraction=0.5).chunks("validation"))


def test_a_file_that_shrinks_while_read_is_named(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("x" * 100 + "\n")
    source = open_source(f"text:{tmp_path}/*.txt")
    (tmp_path / "0.txt").write_text("x" * 10)  # edited while a preparation reads it
    with pytest.raises(ValueError, match=r"0.txt \(from .*\) changed while it was read"):
        list(source.chunks("train", chunk_bytes=16))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.1"])
def test_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match=r"^`validation_fraction` must be in \(0, 1\). Received: "
                                         r"`validation_fraction="):
        open_source(validation_fraction=fraction)


def test_tfds_reads_the_text_feature_of_each_example_as_a_document(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        source = open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path))
        documents = read(source, "train")
        assert read(source, "validation") == documents  # the mock yields the same examples for every split
        second = list(source.chunks("train"))[0].end
        assert [c.text for c in source.chunks("train", start=second)] == documents[1:]  # resumes at example 1
    assert len(documents) == 3
    assert all(10 <= len(doc) < 20 and set(doc) <= set(" abcdefghij") for doc in documents)
    assert source.name == "tfds:tiny_shakespeare"


def test_tfds_missing_text_feature(tmp_path):
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(ValueError, match=r"'tiny_shakespeare' has no feature 'body'.*tfds_text_key.*'text'"):
            open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_text_key="body")


def test_tfds_failed_download_is_one_sentence(tmp_path, monkeypatch):
    from tensorflow_datasets.core.download import downloader

    default_retries = downloader.MAX_RETRIES

    def offline(self, *args, **kwargs):
        # Offline, TFDS's own 10 retries would take minutes before this error; the call lowers them.
        assert downloader.MAX_RETRIES == 2
        raise ConnectionError("Failed to resolve 'raw.githubusercontent.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(FileNotFoundError) as info:
        open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path))
    message = str(info.value)
    assert "'tiny_shakespeare'" in message and "could not be downloaded" in message
    assert "tfds_data_dir" in message and "tfds_manual_dir" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # TFDS's traceback stays out
    assert downloader.MAX_RETRIES == default_retries


def test_tfds_tiny_shakespeare_prepares_offline_from_manual_dir(tmp_path):
    manual_dir = SHARED_DATA / "tinyshakespeare"
    full = (manual_dir / "input.txt").read_text(encoding="utf-8")
    source = open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_manual_dir=str(manual_dir))
    [train], [validation] = read(source, "train"), read(source, "validation")
    assert full.startswith(train) and validation in full
    assert len(train) > 10 * len(validation) > 0
    # Prepared once, it loads with no manual_dir at all.
    assert read(open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path)), "train") == [train]
    # A validation split the dataset lacks falls back to the last fraction of the train split (its one example's
    # text, here).
    carved = open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_validation_split="dev")
    assert read(carved, "train")[0] + read(carved, "validation")[0] == train
    with pytest.raises(ValueError, match=r"no split 'dev'.*tfds_train_split"):
        open_source("tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path), tfds_train_split="dev")


def test_a_single_document_cut_in_two_ends_only_where_its_validation_split_ends(tmp_path):
    # The train split stops inside the document: no chunk of it ends the document (a store would put an
    # end-of-text id there, in the middle of the text).
    path = tmp_path / "one.txt"
    path.write_text("line\n" * 20, encoding="utf-8")
    source = open_source(f"text:{path}", validation_fraction=0.25)
    for split in ("train", "validation"):
        chunks = list(source.chunks(split, chunk_bytes=16))
        assert [chunk.ends_document for chunk in chunks] == [False] * (len(chunks) - 1) + [split == "validation"]


def test_a_byte_order_mark_inside_a_file_is_text_where_a_chunk_starts(tmp_path):
    (tmp_path / "a.txt").write_bytes("line\n\ufeffword\n".encode("utf-8"))  # the second chunk starts at the mark
    (tmp_path / "b.txt").write_text("held out\n", encoding="utf-8")
    source = open_source(f"text:{tmp_path}/*.txt", validation_fraction=0.5)
    assert [chunk.text for chunk in source.chunks("train", chunk_bytes=8)] == ["line\n", "\ufeffword\n"]


def test_a_text_source_lists_the_files_it_reads(tmp_path):
    for name in ("b.txt", "a.txt"):
        (tmp_path / name).write_text("text\n")
    assert open_source(f"text:{tmp_path}/*.txt").files == (str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    assert open_source("builtin:pydoc").files == ()
