import json
import os
import time

import numpy as np
import pytest

from tf_lm.data import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer
from tf_lm.data.tokenizers import END_OF_TEXT

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300)


def test_char_vocabulary_is_sorted_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == tuple(sorted(set("hello world")))
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.vocab_size == 8 and tok.is_char_level
    assert tok.eos_id is None and tok.pad_id is None


def test_char_round_trip_including_non_ascii():
    text = CORPUS + "naïve café — “quotes” 😀 \t\r\n"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.int32)) == text


def test_char_unknown_character_raises_naming_it():
    """Read by a script's user too (a --prompt, a text to score or fine-tune on), who has no `unknown_token` flag:
    the fix is the text or the model, and the Python argument is named as the constructor's."""
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as error:
        tok.encode("ab😀")
    assert str(error.value) == (
        "Character '😀' (U+1F600) at position 2 is not in this CharTokenizer's 3-character vocabulary: the text it "
        "was built from (a model's training text) never holds it. Remove it from the text, or use a model or "
        "tokenizer built from text that holds it; a CharTokenizer constructed in Python can also map unseen "
        "characters to one character, given as its constructor argument `unknown_token` (e.g. "
        "`unknown_token='\\ufffd'`).")


def test_char_unknown_token_maps_unseen_characters():
    tok = CharTokenizer.from_text("abc", unknown_token="?")
    assert tok.vocab_size == 4
    assert tok.decode(tok.encode("axc€")) == "a?c?"


def test_char_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, 3])


def test_char_bad_constructor_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="single-character"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="unknown_token"):
        CharTokenizer.from_text("abc", unknown_token="<unk>")


def test_char_save_load_gives_identical_ids(tmp_path):
    tok = CharTokenizer.from_text(CORPUS, unknown_token="\ufffd")
    tok.save(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert isinstance(loaded, CharTokenizer)
    assert loaded.encode(CORPUS + "€") == tok.encode(CORPUS + "€")
    assert loaded.fingerprint == tok.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["char_tokenizer.json"]  # no temp file left


def test_char_vocabulary_with_a_lone_surrogate_saves_and_loads(tmp_path):
    tok = CharTokenizer.from_text("ab\ud800")
    tok.save(str(tmp_path))
    assert load_tokenizer(str(tmp_path)).encode("b\ud800a") == tok.encode("b\ud800a")


def test_char_fingerprint_tracks_vocabulary():
    assert CharTokenizer.from_text("abc").fingerprint == CharTokenizer(["c", "b", "a"]).fingerprint
    assert CharTokenizer.from_text("abc").fingerprint != CharTokenizer.from_text("abd").fingerprint
    assert CharTokenizer.from_text("abc").fingerprint != CharTokenizer.from_text("abc", unknown_token="?").fingerprint


def test_char_end_of_text_id_comes_after_the_characters(tmp_path):
    plain = CharTokenizer.from_text("abc")
    tok = CharTokenizer.from_text("abc", end_of_text=True)
    assert tok.vocab_size == 4 and tok.eos_id == 3 and tok.encode("cab") == plain.encode("cab")
    assert tok.decode([0, 3, 1, 3, 3]) == f"a{END_OF_TEXT}b{END_OF_TEXT}{END_OF_TEXT}"
    assert tok.tokens == ("a", "b", "c", END_OF_TEXT) and tok.fingerprint != plain.fingerprint
    hf = tok.to_hf()
    assert hf.token_to_id(END_OF_TEXT) == 3 and hf.decode([0, 1]) == "ab"
    tok.save(str(tmp_path / "eot"))
    assert load_tokenizer(str(tmp_path / "eot")).fingerprint == tok.fingerprint
    # A char_tokenizer.json written before the end-of-text id existed loads as it was, fingerprint included.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "char_tokenizer.json").write_text('{"kind": "char", "chars": ["a", "b", "c"], '
                                                          '"unknown_token": null}', encoding="utf-8")
    old = load_tokenizer(str(tmp_path / "old"))
    assert old.eos_id is None and old.vocab_size == 3 and old.fingerprint == plain.fingerprint


def test_tokenizers_save_and_load_on_any_gfile_path(bpe):
    for tokenizer in (CharTokenizer.from_text(CORPUS, end_of_text=True), bpe):
        directory = f"ram://tokenizers/{type(tokenizer).__name__}"
        tokenizer.save(directory)
        assert load_tokenizer(directory).fingerprint == tokenizer.fingerprint


def test_char_encode_is_vectorised():
    text = CORPUS * (1_000_000 // len(CORPUS) + 1)  # ~1 MB
    tok = CharTokenizer.from_text(text)
    start = time.perf_counter()
    ids = tok.encode(text)
    assert time.perf_counter() - start < 0.5
    assert len(ids) == len(text)


def test_bpe_round_trip_and_special_tokens(bpe):
    assert not bpe.is_char_level
    assert 256 < bpe.vocab_size <= 300
    assert bpe.eos_id == bpe._tokenizer.token_to_id(END_OF_TEXT)
    assert bpe.pad_id is None
    assert bpe.decode(bpe.encode(CORPUS)) == CORPUS
    unseen = "Zebra ünïcödé 😀 text never seen in training"
    assert bpe.decode(bpe.encode(unseen)) == unseen  # byte-level: nothing is unknown
    assert len(bpe.encode(CORPUS)) < len(CORPUS) / 2  # the merges really compress the corpus
    assert bpe.encode(f"a{END_OF_TEXT}b")[1] == bpe.eos_id


def test_bpe_save_load_gives_identical_ids(bpe, tmp_path):
    bpe.save(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = load_tokenizer(str(tmp_path))
    assert isinstance(loaded, BPETokenizer)
    assert loaded.encode(CORPUS) == bpe.encode(CORPUS)
    assert loaded.fingerprint == bpe.fingerprint and loaded.eos_id == bpe.eos_id


def test_bpe_loads_gpt2_style_vocab_and_merges(bpe, tmp_path):
    bpe._tokenizer.model.save(str(tmp_path))  # writes vocab.json + merges.txt, GPT-2's layout
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "vocab.json"]
    loaded = load_tokenizer(str(tmp_path))
    assert isinstance(loaded, BPETokenizer)
    assert loaded.encode(CORPUS) == bpe.encode(CORPUS)
    assert loaded.encode(f"x{END_OF_TEXT}") == [loaded.encode("x")[0], bpe.eos_id]


def test_bpe_vocab_with_gaps_in_its_ids_sizes_the_vocabulary_by_the_largest_id(tmp_path):
    # GPT-2 style files may leave ids unused; the embedding needs a row for the largest id, not one per entry.
    import json

    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, END_OF_TEXT: 10}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    loaded = BPETokenizer.load(str(tmp_path))
    assert loaded.vocab_size == 11 and loaded.eos_id == 10
    assert loaded.decode([2, 10]) == f"ab{END_OF_TEXT}"


def test_gpt2_vocab_and_merges_encode_as_hf_gpt2_tokenizer_fast(bpe, tmp_path):
    """GPT-2's own files (vocab.json + merges.txt) go through HF's `GPT2TokenizerFast` in the ecosystem; a model
    directory holding them must give the very same ids, or a GPT-2 checkpoint would read shifted tokens."""
    import transformers

    bpe._tokenizer.model.save(str(tmp_path))
    ours = load_tokenizer(str(tmp_path))
    theirs = transformers.GPT2TokenizerFast(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = (CORPUS[:300] + "  double  spaces,\ttabs\n\nnumbers 1234 it's they'll ünïcödé 😀"
            + END_OF_TEXT + "after the end")
    assert ours.encode(text) == theirs(text)["input_ids"]
    assert ours.eos_id == theirs.eos_token_id


def test_to_hf_encodes_and_decodes_as_the_tokenizer(bpe):
    char = CharTokenizer.from_text(CORPUS + "ü\t", unknown_token="?")
    text = "You  are\tall ü resolved?\n\nSpeak."
    for tokenizer in (char, bpe):
        hf = tokenizer.to_hf()
        assert hf.encode(text).ids == tokenizer.encode(text)
        assert hf.decode(tokenizer.encode(text)) == text
    assert char.to_hf().encode("Zq").ids == char.encode("Zq")  # unseen characters map to the unknown token


def test_bpe_rejects_bad_inputs(bpe, tmp_path):
    with pytest.raises(ValueError, match="needs `vocab_size` to be an integer >= 257 .* Received: `vocab_size=100`$"):
        BPETokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="outside"):
        bpe.decode([bpe.vocab_size])
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        BPETokenizer.load(str(tmp_path))


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="vocab.json' is a file, not a directory"):
        load_tokenizer(str(tmp_path / "vocab.json"))
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="char_tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="char_tokenizer.json"):
        CharTokenizer.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        BPETokenizer.load(str(tmp_path))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "char_tokenizer.json").write_bytes(b'{"chars": ["\xff"]}')
    with pytest.raises(ValueError, match=r"char_tokenizer.json is damaged: it is not UTF-8"):
        load_tokenizer(str(damaged))


def test_build_tokenizer_maps_kinds():
    char = build_tokenizer("char", CORPUS)
    assert isinstance(char, CharTokenizer) and char.vocab_size == len(set(CORPUS)) + 1  # + the end-of-text id
    assert char.eos_id == len(set(CORPUS))
    streamed = build_tokenizer("char", iter([CORPUS[:50], "", CORPUS[50:]]))  # chunks, as a token store reads them
    assert streamed.fingerprint == char.fingerprint
    bpe = build_tokenizer("bpe", CORPUS, vocab_size=280)
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size <= 280
    with pytest.raises(ValueError, match="Unknown tokenizer kind 'word'"):
        build_tokenizer("word", CORPUS)
    with pytest.raises(ValueError, match="drop vocab_size"):
        build_tokenizer("char", CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="non-empty"):
        build_tokenizer("bpe", "")


def test_a_char_tokenizers_tokenizer_json_loads_back_as_that_char_tokenizer(bpe, tmp_path):
    """An HF export of a char model holds only `to_hf`'s tokenizer.json: it must read back as the CharTokenizer
    (same ids, end-of-text id and unknown token), not as a word-level BPETokenizer."""
    text = "You  are all resolved?\n\n"
    for tokenizer in (CharTokenizer.from_text(CORPUS, end_of_text=True), CharTokenizer.from_text(CORPUS),
                      CharTokenizer.from_text(CORPUS, unknown_token="?", end_of_text=True)):
        directory = tmp_path / str(tokenizer.fingerprint)[:8]
        directory.mkdir()
        (directory / "tokenizer.json").write_text(tokenizer.to_hf().to_str(pretty=True), encoding="utf-8")
        loaded = load_tokenizer(str(directory))
        assert isinstance(loaded, CharTokenizer) and loaded.is_char_level
        assert loaded.fingerprint == tokenizer.fingerprint and loaded.eos_id == tokenizer.eos_id
        assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.unknown_token == "?" and loaded.encode("Zq") == tokenizer.encode("Zq")
    assert CharTokenizer.from_hf_json(bpe.to_hf().to_str()) is None
    assert CharTokenizer.from_hf_json("{not json") is None


def test_a_word_level_tokenizer_that_cannot_encode_a_text_raises_a_one_line_value_error(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({"hello": 0, "world": 1, END_OF_TEXT: 2}))  # no unknown token
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = BPETokenizer(words)
    assert tokenizer.encode("hello world") == [0, 1]
    for encode in (tokenizer.encode, lambda text: tokenizer.encode_batch([text])):
        with pytest.raises(ValueError, match=r"cannot encode this text \(WordLevel error: .*\)") as error:
            encode("hello there")
        assert "\n" not in str(error.value)


def test_load_tokenizer_takes_a_model_directory(tmp_path):
    """A train_lm --model_dir keeps its tokenizer in model/tokenizer/: the directory itself names it too."""
    tokenizer = CharTokenizer.from_text(CORPUS, end_of_text=True)
    tokenizer.save(str(tmp_path / "run" / "model" / "tokenizer"))
    assert load_tokenizer(str(tmp_path / "run")).fingerprint == tokenizer.fingerprint
    (tmp_path / "run" / "model" / "tokenizer" / "char_tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="No tokenizer in .*model/tokenizer"):
        load_tokenizer(str(tmp_path / "run"))


@pytest.mark.parametrize("payload, reason", [
    ({"chars": "abc", "end_of_text": True}, "its chars is a string and its end_of_text true"),
    ({"chars": ["a", "b"], "end_of_text": "no"}, "its end_of_text a string"),
    ({"chars": ["a", "bc"]}, "single-character strings"),
    ({"char": ["a"]}, "'chars'"),
])
def test_a_char_tokenizer_file_of_another_shape_is_refused_naming_it(tmp_path, payload, reason):
    """A string of characters loaded as its characters, and "no" as true: an end-of-text id the model never saw."""
    (tmp_path / "char_tokenizer.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=rf"char_tokenizer.json is not a valid CharTokenizer file \(.*{reason}"):
        CharTokenizer.load(str(tmp_path))
