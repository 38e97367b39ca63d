"""Token stores: round trip, determinism, resumable preparation, flat reading, any tf.io.gfile path, bad stores."""

import contextlib
import json
import os
import shutil

import numpy as np
import pytest
from conftest import files_of

from tf_lm.data import BPETokenizer, CharTokenizer, TokenStore, lm_datasets, load_tokenizer, prepare_store
from tf_lm.data import store as store_module
from tf_lm.data.store import MANIFEST, PREPARING, DamagedStoreError
from tf_lm.data.tokenizers import END_OF_TEXT

DOCUMENTS = ["First document: naïve café.\nSecond line.\n", "Second — with “quotes” 😀\n" * 3, "third\n" * 40,
             "The fourth, held out.\n"]


@pytest.fixture
def corpus(tmp_path):
    for i, text in enumerate(DOCUMENTS):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    return f"text:{tmp_path}/doc*.txt"


def all_ids(store):
    return np.concatenate([store.read(split, 0, store.num_tokens(split)) for split in ("train", "validation")])



@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_round_trip_gives_back_the_documents_with_end_of_text_between_them(corpus, tmp_path, tokenizer):
    vocab = {"bpe_vocab_size": 300} if tokenizer == "bpe" else {}
    store = prepare_store(corpus, str(tmp_path / "store"), tokenizer=tokenizer, shard_tokens=50, chunk_bytes=16,
                          validation_fraction=0.3, **vocab)
    ids = all_ids(store)
    assert store.tokenizer.decode(ids) == "".join(text + END_OF_TEXT for text in DOCUMENTS)
    assert (ids == store.eos_id).sum() == len(DOCUMENTS)
    manifest = json.loads((tmp_path / "store" / MANIFEST).read_text())
    assert manifest["dtype"] == "uint16" and manifest["end_of_document_id"] == store.eos_id
    assert manifest["tokenizer"]["fingerprint"] == store.tokenizer.fingerprint
    assert manifest["request"]["source"] == corpus
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 1 and all(s["tokens"] >= 50 for s in shards[:-1])  # small shards: reads cross them
    sizes = {s["file"]: s["tokens"] for split in ("train", "validation") for s in manifest["splits"][split]["shards"]}
    for name, tokens in sizes.items():
        assert (tmp_path / "store" / name).stat().st_size == 2 * tokens
    assert not (tmp_path / "store" / PREPARING).exists()
    window = store.read("train", 40, 30)  # crosses the first shard boundary
    np.testing.assert_array_equal(window, ids[40:70])


def test_preparing_twice_gives_identical_stores_and_a_finished_store_is_reused(corpus, tmp_path):
    kwargs = {"tokenizer": "bpe", "bpe_vocab_size": 280, "shard_tokens": 40, "chunk_bytes": 32}
    prepare_store(corpus, str(tmp_path / "a"), **kwargs)
    prepare_store(corpus, str(tmp_path / "b"), **kwargs)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    before = files_of(tmp_path / "a")
    assert prepare_store(corpus, str(tmp_path / "a"), **kwargs).num_tokens("train") > 0
    assert files_of(tmp_path / "a") == before
    with pytest.raises(ValueError, match=r"a\b.* holds a token store prepared with other arguments"):
        prepare_store(corpus, str(tmp_path / "a"), **{**kwargs, "bpe_vocab_size": 290})


def test_an_interrupted_preparation_is_finished_byte_identically(corpus, tmp_path, monkeypatch):
    kwargs = {"tokenizer": "bpe", "bpe_vocab_size": 280, "shard_tokens": 30, "chunk_bytes": 16}
    straight = prepare_store(corpus, str(tmp_path / "straight"), **kwargs)
    write = store_module.atomic_write

    def dies_writing_the_fourth_shard(path, data):
        if path.endswith("train-00003.bin"):
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(store_module, "atomic_write", dies_writing_the_fourth_shard)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        prepare_store(corpus, str(killed), **kwargs)
    assert not (killed / MANIFEST).exists()  # nothing takes it for a store
    with pytest.raises(FileNotFoundError, match="did not finish"):
        TokenStore(str(killed))
    assert sorted(p.name for p in killed.glob("train-*.bin")) == [f"train-0000{k}.bin" for k in range(3)]

    monkeypatch.setattr(store_module, "atomic_write", write)
    monkeypatch.setattr(store_module, "build_tokenizer", None)  # resuming must not train BPE again
    encoded = []
    encode_batch = BPETokenizer.encode_batch
    monkeypatch.setattr(BPETokenizer, "encode_batch", lambda self, texts: encoded.extend(texts) or
                        encode_batch(self, texts))
    store = prepare_store(corpus, str(killed), **kwargs)
    assert files_of(killed) == files_of(tmp_path / "straight")
    np.testing.assert_array_equal(all_ids(store), all_ids(straight))
    assert len("".join(encoded)) < len("".join(DOCUMENTS)) - 3 * 30  # the three finished shards were kept


def test_a_given_tokenizer_encodes_the_store(corpus, tmp_path):
    given = CharTokenizer.from_text("".join(DOCUMENTS) + "xyz", end_of_text=True)
    store = prepare_store(corpus, str(tmp_path / "store"), tokenizer=given)
    assert store.tokenizer.fingerprint == given.fingerprint
    assert given.decode(all_ids(store)).count(END_OF_TEXT) == len(DOCUMENTS)
    bpe = BPETokenizer.train("".join(DOCUMENTS), vocab_size=270)
    bpe._tokenizer.model.save(str(tmp_path))  # GPT-2's layout: vocab.json + merges.txt
    gpt2_style = load_tokenizer(str(tmp_path))
    store = prepare_store(corpus, str(tmp_path / "gpt2"), tokenizer=gpt2_style)
    assert gpt2_style.decode(all_ids(store)).replace(END_OF_TEXT, "") == "".join(DOCUMENTS)
    with pytest.raises(ValueError, match="'F'.*not in this CharTokenizer"):
        prepare_store(corpus, str(tmp_path / "narrow"), tokenizer=CharTokenizer.from_text("abc"))


def test_ram_filesystem_store_trains_like_a_local_one(corpus, tmp_path):
    local = prepare_store(corpus, str(tmp_path / "local"), shard_tokens=64, chunk_bytes=16)
    remote = prepare_store(corpus, "ram://stores/test", shard_tokens=64, chunk_bytes=16)
    np.testing.assert_array_equal(all_ids(remote), all_ids(local))
    pairs = zip(lm_datasets(local, 8, 4, seed=2)[0].take(3), lm_datasets(remote, 8, 4, seed=2)[0].take(3))
    for (x, y), (rx, ry) in pairs:
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)


def test_bad_stores_are_refused_in_one_sentence(corpus, tmp_path):
    directory = tmp_path / "store"
    prepare_store(corpus, str(directory), shard_tokens=64)
    shard = directory / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # truncated
    with pytest.raises(ValueError, match=r"'.*store' is damaged: train-00001.bin holds .* bytes, its manifest says"):
        TokenStore(str(directory))
    shard.unlink()
    with pytest.raises(ValueError, match="train-00001.bin is missing"):
        TokenStore(str(directory))
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="is not a token store manifest"):
        TokenStore(str(directory))
    (directory / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match="No manifest.json in token store .*prepare_data"):
        TokenStore(str(directory))
    (directory / PREPARING).mkdir()
    with pytest.raises(FileNotFoundError, match="did not finish; rerun the same prepare_data command"):
        TokenStore(str(directory))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no .preparing, so it is not one of ours"):
        prepare_store(corpus, str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        prepare_store(f"text:{tmp_path}/empty.txt", str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="shard_tokens=0"):
        prepare_store(corpus, str(tmp_path / "never"), shard_tokens=0)
    with pytest.raises(ValueError, match="Unknown tokenizer kind 'word'"):
        prepare_store(corpus, str(tmp_path / "never"), tokenizer="word")


def test_an_id_outside_the_vocabulary_is_refused_when_read_naming_its_shard(corpus, tmp_path):
    directory = tmp_path / "store"
    store = prepare_store(corpus, str(directory), shard_tokens=64)
    shard = directory / "train-00001.bin"
    damaged = bytearray(shard.read_bytes())
    damaged[10:12] = store.vocab_size.to_bytes(2, "little")  # id 5 of the shard: the first id past the vocabulary
    shard.write_bytes(bytes(damaged))
    store = TokenStore(str(directory))  # sizes agree: only a read can tell
    second = store.manifest["splits"]["train"]["shards"][0]["tokens"]  # where train-00001.bin starts
    store.read("train", 0, second)  # train-00000.bin is whole
    # A window holding the id names it, before the shard's checksum is compared (a store written before checksums
    # has only this check).
    with pytest.raises(DamagedStoreError, match=rf"^Token store '.*store' is damaged: train-00001.bin holds id "
                                                rf"{store.vocab_size} \(at position 5\), outside its tokenizer's "
                                                rf"{store.vocab_size} ids; prepare the store again"):
        store.read("train", second - 3, 10)
    with pytest.raises(DamagedStoreError, match="train-00001.bin does not hold the ids its manifest records"):
        store.read("train", second, 5)  # the ids before it: valid, but from a shard that is not what was written


def test_verify_finds_a_shard_overwritten_at_its_own_size_which_sizes_and_ids_cannot(corpus, tmp_path, monkeypatch):
    directory = tmp_path / "store"
    store = prepare_store(corpus, str(directory), shard_tokens=64)
    shards = {split: len(store.manifest["splits"][split]["shards"]) for split in ("train", "validation")}
    monkeypatch.setattr(store_module, "CHECKSUM_READ_BYTES", 5)  # a checksum carried across reads
    assert store.verify() == shards["train"] + shards["validation"]
    shard = directory / "train-00001.bin"
    shard.write_bytes(bytes(shard.stat().st_size))  # id 0 is a valid id: only a checksum tells
    store = TokenStore(str(directory))
    assert store.verify("validation") == shards["validation"]
    with pytest.raises(DamagedStoreError, match=r"^Token store '.*store' is damaged: train-00001.bin does not hold "
                                                r"the ids its manifest records \(its CRC-32 is [0-9a-f]{8}, not "
                                                r"[0-9a-f]{8}\); prepare the store again into a new directory.$"):
        store.verify()
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        store.verify("test")


def test_the_first_read_from_a_shard_compares_its_checksum_once(corpus, tmp_path, monkeypatch):
    directory = tmp_path / "store"
    prepare_store(corpus, str(directory), shard_tokens=32)
    compared = []
    check = store_module._check_checksum
    monkeypatch.setattr(store_module, "_check_checksum", lambda *args: (compared.append(args[1]), check(*args)))
    store = TokenStore(str(directory))
    first = store.manifest["splits"]["train"]["shards"][0]["tokens"]
    for start in range(0, first - 8, 8):
        store.read("train", start, 8)
    assert compared == ["train-00000.bin"]
    store.read("train", first - 4, 8)  # across the boundary
    assert compared == ["train-00000.bin", "train-00001.bin"]
    shard = directory / "train-00002.bin"
    shard.write_bytes(bytes(shard.stat().st_size))  # id 0 is a valid id: only a checksum tells
    third = int(np.cumsum([entry["tokens"] for entry in store.manifest["splits"]["train"]["shards"]])[1])
    for _ in range(2):  # refused at every read, with one comparison
        with pytest.raises(DamagedStoreError, match="train-00002.bin does not hold the ids its manifest records"):
            store.read("train", third, 4)
    assert compared.count("train-00002.bin") == 1


def test_a_store_written_before_checksums_reads_and_has_nothing_to_verify(corpus, tmp_path):
    directory = tmp_path / "store"
    store = prepare_store(corpus, str(directory))
    manifest = json.loads((directory / MANIFEST).read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["crc32"]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    old = TokenStore(str(directory))
    np.testing.assert_array_equal(all_ids(old), all_ids(store))
    assert old.verify() == 0


def test_a_resume_from_notes_written_before_checksums_finishes_without_theirs(corpus, tmp_path, monkeypatch):
    directory = tmp_path / "store"
    _killed_before_validation(corpus, directory, monkeypatch)
    for note in (directory / PREPARING).glob("train-*.json"):
        note.write_text(json.dumps({k: v for k, v in json.loads(note.read_text()).items() if k != "crc32"}))
    store = prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    assert store.verify() == len(store.manifest["splits"]["validation"]["shards"])  # the shards written since
    assert store.read("train", 0, store.num_tokens("train")).size == store.num_tokens("train")


def test_an_edited_source_is_not_taken_for_its_store(corpus, tmp_path):
    directory = str(tmp_path / "store")
    prepare_store(corpus, directory)
    (tmp_path / "doc2.txt").write_text("third, rewritten\n" * 40, encoding="utf-8")
    with pytest.raises(ValueError, match="from another version of the source .*source_digest"):
        prepare_store(corpus, directory)
    shutil.rmtree(directory)
    prepare_store(corpus, directory)
    (tmp_path / "doc2.txt").write_text("THIRD, REWRITTEN\n" * 40, encoding="utf-8")  # an edit of the same size
    with pytest.raises(ValueError, match="from another version of the source .*source_digest"):
        prepare_store(corpus, directory)

    # A preparation killed after its first shard, then resumed on edited text, would mix the two versions.
    write = store_module.atomic_write

    def dies_after_the_first_shard(path, data):
        if path.endswith("train-00001.bin"):
            raise KeyboardInterrupt
        write(path, data)

    store_module.atomic_write = dies_after_the_first_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_store(corpus, str(tmp_path / "killed"), shard_tokens=64)
    finally:
        store_module.atomic_write = write
    (tmp_path / "doc0.txt").write_text("First document, edited.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unfinished token store .*another version of the source .*cannot be "
                                         "finished: delete the directory, or choose another directory.$"):
        prepare_store(corpus, str(tmp_path / "killed"), shard_tokens=64)


def test_a_refused_argument_leaves_nothing_that_blocks_the_corrected_rerun(corpus, tmp_path):
    directory = tmp_path / "store"
    for bad in ({"tokenizer": "bpe", "bpe_vocab_size": 100}, {"chunk_bytes": 2}):
        with pytest.raises(ValueError, match="Received: `(bpe_vocab_size=100|chunk_bytes=2)`$"):
            prepare_store(corpus, str(directory), **bad)
        assert not directory.exists()
    # A refusal that only encoding finds (a character the given tokenizer lacks) removes the directory it
    # created, and empties one that was empty.
    with pytest.raises(ValueError, match="not in this CharTokenizer"):
        prepare_store(corpus, str(directory), tokenizer=CharTokenizer.from_text("abc"))
    assert not directory.exists(), "a directory the failed preparation created was left half prepared"
    directory.mkdir()
    with pytest.raises(ValueError, match="not in this CharTokenizer"):
        prepare_store(corpus, str(directory), tokenizer=CharTokenizer.from_text("abc"))
    assert directory.exists() and not any(directory.iterdir())
    store = prepare_store(corpus, str(directory), tokenizer="bpe", bpe_vocab_size=280)
    assert store.tokenizer.decode(all_ids(store)).replace(END_OF_TEXT, "") == "".join(DOCUMENTS)
    # The default vocabulary named or left unset is one request.
    prepare_store(corpus, str(tmp_path / "default"), tokenizer="bpe")
    prepare_store(corpus, str(tmp_path / "default"), tokenizer="bpe", bpe_vocab_size=4096)


def test_a_preparation_failing_after_finished_shards_leaves_an_empty_directory_empty(corpus, tmp_path):
    # The last document (held out) is not UTF-8: the train split's shards are finished when it fails. Left behind,
    # they would block the corrected source, a new version of it, as an unfinished store of another one.
    (tmp_path / "doc9.txt").write_bytes("café\n".encode("latin-1"))
    directory = tmp_path / "store"
    directory.mkdir()
    with pytest.raises(ValueError, match=r"doc9.txt \(from .*\) is not UTF-8"):
        prepare_store(corpus, str(directory), shard_tokens=16)
    assert directory.exists() and not any(directory.iterdir())
    (tmp_path / "doc9.txt").write_text("café\n", encoding="utf-8")
    store = prepare_store(corpus, str(directory), shard_tokens=16)
    assert store.tokenizer.decode(all_ids(store)) == "".join(text + END_OF_TEXT for text in DOCUMENTS + ["café\n"])


def test_one_process_prepares_a_directory_at_a_time(corpus, tmp_path):
    from tf_lm.fileio import directory_lock

    with directory_lock(str(tmp_path / "store" / PREPARING)):  # another preparation holds it
        with pytest.raises(ValueError, match=r"store/\.preparing is in use by another run \(pid"):
            prepare_store(corpus, str(tmp_path / "store"))
    assert prepare_store(corpus, str(tmp_path / "store")).num_tokens("train") > 0
    assert not (tmp_path / "store" / PREPARING).exists()


def test_a_preparation_refused_the_lock_leaves_the_new_directory_to_its_holder(corpus, tmp_path, monkeypatch):
    target, holder = tmp_path / "store", contextlib.ExitStack()
    lock = store_module.directory_lock

    def another_process_first(path):
        # Between this call's check that the directory is new and its lock, another preparation created the
        # directory, took the lock and wrote a shard.
        holder.enter_context(lock(path))
        (target / "shard-of-the-other-process").write_text("ids")
        return lock(path)

    monkeypatch.setattr(store_module, "directory_lock", another_process_first)
    with holder, pytest.raises(ValueError, match="in use by another run"):
        prepare_store(corpus, str(target))
    assert (target / "shard-of-the-other-process").exists()


def test_ids_past_65535_are_stored_whole_when_the_vocabulary_has_gaps(corpus, tmp_path):
    from tokenizers.pre_tokenizers import ByteLevel

    # GPT-2's layout with the end-of-text token at a high id: 257 entries, ids up to 70000.
    vocab = {byte: i for i, byte in enumerate(sorted(ByteLevel.alphabet()))} | {END_OF_TEXT: 70000}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.vocab_size == 70001 and tokenizer.eos_id == 70000
    store = prepare_store(corpus, str(tmp_path / "store"), tokenizer=tokenizer)
    assert store.dtype == np.dtype("<u4")
    assert tokenizer.decode(all_ids(store)).replace(END_OF_TEXT, "") == "".join(DOCUMENTS)
    assert (all_ids(store) == 70000).sum() == len(DOCUMENTS)


def test_a_post_processor_adds_no_tokens_inside_documents(corpus, tmp_path):
    from tokenizers import processors

    bpe = BPETokenizer.train("".join(DOCUMENTS), vocab_size=270)
    hf = bpe.to_hf()
    # RoBERTa's layout: a tokenizer.json whose post-processor wraps every encoding in <s> ... </s>.
    hf.add_special_tokens(["<s>", "</s>"])
    hf.post_processor = processors.RobertaProcessing(("</s>", hf.token_to_id("</s>")), ("<s>", hf.token_to_id("<s>")))
    wrapped = BPETokenizer(hf)
    assert wrapped.encode("") == [] and wrapped.encode("third\n") == bpe.encode("third\n")
    store = prepare_store(corpus, str(tmp_path / "store"), tokenizer=wrapped, chunk_bytes=16)
    assert wrapped.decode(all_ids(store)).replace(END_OF_TEXT, "") == "".join(DOCUMENTS)


def test_reading_holds_no_descriptor_per_shard_and_file_urls_work(corpus, tmp_path):
    import os

    store = prepare_store(corpus, str(tmp_path / "store"), shard_tokens=4, chunk_bytes=8)
    assert len(store.manifest["splits"]["train"]["shards"]) > 20
    before = len(os.listdir("/proc/self/fd"))
    ids = all_ids(store)
    assert len(os.listdir("/proc/self/fd")) == before
    url = TokenStore(f"file://{tmp_path / 'store'}")
    np.testing.assert_array_equal(all_ids(url), ids)
    assert len(url._remote_handles) <= store_module.OPEN_REMOTE_SHARDS


def test_a_manifest_missing_a_field_is_refused_in_one_sentence(corpus, tmp_path):
    directory = tmp_path / "store"
    prepare_store(corpus, str(directory))
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["end_of_document_id"]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is not a token store manifest .*end_of_document_id"):
        TokenStore(str(directory))


@pytest.mark.parametrize("shape, reason", [
    (lambda split: split["shards"][0].pop("file"), "'file'"),
    (lambda split: split["shards"][0].update(tokens=str(split["shards"][0]["tokens"])),
     r"a shard's token count is '\d+', not an integer >= 0"),
    (lambda split: split["shards"][0].update(tokens=-2), "a shard's token count is -2, not an integer >= 0"),
    (lambda split: split["shards"][0].update(crc32=-1), "a shard's crc32 is -1, not an unsigned 32-bit integer"),
    (lambda split: split.update(shards=None), "'NoneType' object is not iterable"),
    (lambda split: split.update(shards=[7]), "'int' object is not subscriptable"),
])
def test_a_manifest_of_another_shape_is_refused_in_one_sentence(corpus, tmp_path, shape, reason):
    directory = tmp_path / "store"
    prepare_store(corpus, str(directory))
    manifest = json.loads((directory / MANIFEST).read_text())
    shape(manifest["splits"]["train"])
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"manifest.json is not a token store manifest \({reason}\); prepare the "
                                         "store again.$"):
        TokenStore(str(directory))


def test_a_vocabulary_of_exactly_65536_ids_is_stored_as_uint16(corpus, tmp_path):
    from tokenizers.pre_tokenizers import ByteLevel

    # GPT-2's layout with the end-of-text token at 65535, the largest id uint16 holds: 2 bytes an id, not 4.
    vocab = {byte: i for i, byte in enumerate(sorted(ByteLevel.alphabet()))} | {END_OF_TEXT: 65535}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.vocab_size == 1 << 16
    store = prepare_store(corpus, str(tmp_path / "store"), tokenizer=tokenizer)
    assert store.dtype == np.dtype("<u2") and store.manifest["dtype"] == "uint16"
    assert (all_ids(store) == 65535).sum() == len(DOCUMENTS)


def test_a_shard_is_closed_as_soon_as_it_holds_shard_tokens_ids(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghijkl", encoding="utf-8")  # one document: train is its first 10 bytes
    store = prepare_store(f"text:{tmp_path}/a.txt", str(tmp_path / "store"), shard_tokens=4, chunk_bytes=4)
    assert [shard["tokens"] for shard in store.manifest["splits"]["train"]["shards"]] == [4, 4, 2]


def test_a_resumed_preparation_that_fails_keeps_the_shards_finished_before(corpus, tmp_path, monkeypatch):
    # Only a directory that was new or empty is emptied again on an error: a resumed one keeps its finished shards.
    write, directory = store_module.atomic_write, tmp_path / "store"

    def fails_writing(name, error):
        def atomic_write(path, data):
            if path.endswith(name):
                raise error
            write(path, data)
        return atomic_write

    monkeypatch.setattr(store_module, "atomic_write", fails_writing("train-00002.bin", KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    monkeypatch.setattr(store_module, "atomic_write", fails_writing("train-00003.bin", OSError("No space left")))
    with pytest.raises(OSError, match="No space left"):
        prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    assert sorted(p.name for p in directory.glob("train-*.bin")) == [f"train-0000{k}.bin" for k in range(3)]
    assert (directory / PREPARING / "train-00002.json").exists()
    monkeypatch.setattr(store_module, "atomic_write", write)
    store = prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    assert store.tokenizer.decode(all_ids(store)) == "".join(text + END_OF_TEXT for text in DOCUMENTS)


def test_a_bpe_vocabulary_size_with_the_char_tokenizer_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"^`bpe_vocab_size` only applies to `tokenizer='bpe'`. Received: "
                                         r"`bpe_vocab_size=300`$"):
        prepare_store(corpus, str(tmp_path / "store"), tokenizer="char", bpe_vocab_size=300)
    assert not (tmp_path / "store").exists()


def test_a_negative_length_is_outside_the_split(corpus, tmp_path):
    store = prepare_store(corpus, str(tmp_path / "store"))
    with pytest.raises(ValueError, match=r"Ids \[5, 4\) are outside the train split"):
        store.read("train", 5, -1)


def test_a_resumed_preparation_removes_the_temporary_file_of_the_killed_write(corpus, tmp_path, monkeypatch):
    kwargs = {"shard_tokens": 30, "chunk_bytes": 16}
    straight = prepare_store(corpus, str(tmp_path / "straight"), **kwargs)
    write, killed = store_module.atomic_write, tmp_path / "killed"

    def killed_while_writing_the_third_shard(path, data):
        if path.endswith("train-00002.bin"):
            (killed / ".train-00002.bin.tmp-0123456789ab").write_bytes(data[:3])  # what atomic_write leaves
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(store_module, "atomic_write", killed_while_writing_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(corpus, str(killed), **kwargs)
    monkeypatch.setattr(store_module, "atomic_write", write)
    prepare_store(corpus, str(killed), **kwargs)
    assert files_of(killed) == files_of(tmp_path / "straight") and straight.num_tokens("train") > 0


def test_a_remote_store_keeps_its_most_recently_read_shards_open(corpus, tmp_path, monkeypatch):
    import os
    import types

    prepare_store(corpus, str(tmp_path / "store"), shard_tokens=64, chunk_bytes=16)
    monkeypatch.setattr(store_module, "OPEN_REMOTE_SHARDS", 2)
    store, opened = TokenStore(f"file://{tmp_path / 'store'}"), []
    gfile = store._files
    store._files = types.SimpleNamespace(GFile=lambda path, mode: opened.append(os.path.basename(path)) or
                                         gfile.GFile(path, mode))
    for shard in (0, 1, 2, 2, 1, 0):  # the third shard closes the least recently read, the first
        store.read("train", int(store._bounds["train"][shard]), 1)
    assert opened == ["train-00000.bin", "train-00001.bin", "train-00002.bin", "train-00000.bin"]


def _killed_before_validation(corpus, directory, monkeypatch):
    """A preparation of `directory` killed after its train split finished (train.done written)."""
    write = store_module.atomic_write

    def killed_at_validation(path, data):
        if os.path.basename(path).startswith("validation-"):
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(store_module, "atomic_write", killed_at_validation)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    monkeypatch.setattr(store_module, "atomic_write", write)
    assert (directory / PREPARING / "train.done").exists() and not (directory / MANIFEST).exists()


def test_a_resume_whose_notes_lost_a_finished_shard_is_refused_not_cut_short(corpus, tmp_path, monkeypatch):
    """A lost note ended the split at the gap, and the store was published without the shards after it."""
    directory = tmp_path / "store"
    _killed_before_validation(corpus, directory, monkeypatch)
    (directory / PREPARING / "train-00002.json").unlink()
    with pytest.raises(ValueError, match=r"train split has \d+ shards but notes for only 2 \(\.preparing is damaged\)"):
        prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    assert not (directory / MANIFEST).exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "holds 7 bytes, its notes say"), ("missing", "is missing, its notes say"),
    ("zeroed", "does not hold the ids its notes record"),
])
def test_a_resume_checks_the_shards_it_did_not_write_before_publishing_the_store(corpus, tmp_path, monkeypatch,
                                                                                   damage, message):
    directory = tmp_path / "store"
    _killed_before_validation(corpus, directory, monkeypatch)
    shard = directory / "train-00001.bin"
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:7] if damage == "truncated" else bytes(shard.stat().st_size))
    with pytest.raises(DamagedStoreError, match=rf"is damaged: train-00001.bin {message}"):
        prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)
    assert not (directory / MANIFEST).exists()


@pytest.mark.parametrize("note, content", [("request.json", "[]"), ("train-00000.json", '{"file": 3}')])
def test_a_damaged_note_of_an_unfinished_store_is_one_error_naming_it(corpus, tmp_path, monkeypatch, note, content):
    directory = tmp_path / "store"
    _killed_before_validation(corpus, directory, monkeypatch)
    (directory / PREPARING / note).write_text(content)
    with pytest.raises(ValueError, match=rf"{note} is damaged"):
        prepare_store(corpus, str(directory), shard_tokens=30, chunk_bytes=16)


def test_a_manifest_whose_request_is_not_an_object_is_not_a_store(corpus, tmp_path):
    store = prepare_store(corpus, str(tmp_path / "store"))
    manifest = {**store.manifest, "request": "x"}
    (tmp_path / "store" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is not a token store manifest \\(its request is a string, not an object"):
        prepare_store(corpus, str(tmp_path / "store"))


def test_a_source_that_reads_files_inside_the_store_directory_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n" * 50)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "train-00000.bin").write_bytes(b"\x01\x00" * 10)  # a killed preparation's shard
    with pytest.raises(ValueError, match=rf"^The source 'text:{tmp_path}/\*\*' reads 1 file\(s\) inside the store "
                                         rf"directory '{tmp_path / 'store'}' \(such as "):
        prepare_store(f"text:{tmp_path}/**", str(tmp_path / "store"))
    assert os.listdir(tmp_path / "store") == ["train-00000.bin"]
