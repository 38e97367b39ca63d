"""tf_lm.bert.model / weights / tokenizer: BertClassifier on our layers equals TFBertForSequenceClassification."""

import dataclasses
import json
import os
import re

import keras
import numpy as np
import pytest

from tf_lm.bert import data, weights
from tf_lm.bert.config import BertConfig
from tf_lm.bert.model import BertClassifier
from tf_lm.bert.tokenizer import WordPieceTokenizer

TINY = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                  max_position_embeddings=12, num_labels=3, label_names=("a", "b", "c"))


def padded(token_ids):
    width = max(len(row) for row in token_ids)
    ids = np.zeros((len(token_ids), width), np.int32)
    mask = np.zeros_like(ids)
    for i, row in enumerate(token_ids):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def sst2_batch():
    """16 real SST-2 dev sentences of different lengths, padded to the longest (most rows carry padding)."""
    from experiments.benchmarks.common import SHARED_DATA

    texts = data.read_table(str(SHARED_DATA / "sst2" / "dev.tsv")).texts[:16]
    return texts, padded(WordPieceTokenizer(weights.resolve_local("minilm"))(texts, max_length=64)["input_ids"])


def copy_classifier(hf_model, ours):
    """The same (random, O(1)) head on both, so the logits compare the encoders at a useful scale."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=tuple(ours.classifier.kernel.shape)).astype("float32")
    bias = rng.normal(size=tuple(ours.classifier.bias.shape)).astype("float32")
    hf_model.classifier.kernel.assign(kernel)
    hf_model.classifier.bias.assign(bias)
    ours.classifier.kernel.assign(kernel)
    ours.classifier.bias.assign(bias)


def test_tokenizer_matches_transformers_on_sst2(sst2_batch):
    from tf_lm.bert import hub

    texts, _ = sst2_batch
    ours = WordPieceTokenizer(weights.resolve_local("minilm"))
    assert ours(texts, max_length=12)["input_ids"] == hub.load_tokenizer("minilm")(
        texts, truncation=True, max_length=12)["input_ids"]
    assert ours.pad_token_id == 0 and ours.model_max_length == 512


@pytest.mark.parametrize("config", [
    {}, {"strip_accents": True}, {"strip_accents": False}, {"do_lower_case": False, "strip_accents": True},
    {"tokenize_chinese_chars": False}, {"unk_token": {"content": "[MASK]", "__type": "AddedToken"}},
])
def test_vocab_only_tokenizer_reads_its_config_as_transformers_does(tmp_path, config):
    """Without `tokenizer.json` the WordPiece tokenizer is built from `vocab.txt` and `tokenizer_config.json`, with
    the ids `BertTokenizerFast` (the hf backend's) gives for the same directory."""
    import shutil

    import transformers

    shutil.copy(os.path.join(weights.resolve_local("minilm"), "vocab.txt"), tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["Héllo WORLD café naïve", "Ünïcödé crème brûlée", "日本語 テキスト", "a [SEP] b ☃"]
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))(texts)["input_ids"]
    assert WordPieceTokenizer(str(tmp_path))(texts)["input_ids"] == theirs


# A config written before `added_tokens_decoder` existed (MiniLM's), edited special_tokens_map.json; and one with it.
MINILM_DECODER = {str(i): {"content": token, "special": True}
                  for i, token in ((0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]"))}


@pytest.mark.parametrize("tokenizer_file", ["tokenizer.json", "vocab.txt"])
@pytest.mark.parametrize("special_tokens_map, config", [
    ({"cls_token": "[MASK]", "unk_token": "[PAD]"}, {}),  # was ignored: [CLS] 101 and [UNK] 100 from vocab.txt
    ({"pad_token": "[MASK]"}, {}),  # was ignored: padded with 0
    ({"additional_special_tokens": ["[unused1]"]}, {"additional_special_tokens": ["[unused2]"]}),  # were split
    ({"cls_token": "[MASK]"}, {"added_tokens_decoder": MINILM_DECODER}),  # transformers then ignores the map
], ids=["specials", "pad", "additional", "ignored_beside_added_tokens_decoder"])
def test_special_tokens_map_is_read_as_transformers_reads_it(tmp_path, tokenizer_file, special_tokens_map, config):
    """transformers takes the special tokens of `special_tokens_map.json` over `tokenizer_config.json`'s (when the
    config has no `added_tokens_decoder`), and matches every special token whole, before WordPiece."""
    import shutil

    import transformers

    minilm = weights.resolve_local("minilm")
    for name in (tokenizer_file, "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm, name), tmp_path)
    for name, edit in (("special_tokens_map.json", special_tokens_map), ("tokenizer_config.json", config)):
        (tmp_path / name).write_text(json.dumps({**json.loads((tmp_path / name).read_text()), **edit}))
    texts = ["a [MASK] film ☃", "x[unused1]y [UNUSED2] [unused2] [CLS]"]
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    ours = WordPieceTokenizer(str(tmp_path))
    assert ours(texts)["input_ids"] == theirs(texts)["input_ids"]
    assert ours.pad_token_id == theirs.pad_token_id


@pytest.mark.parametrize("tokenizer_file", ["tokenizer.json", "vocab.txt"])
@pytest.mark.parametrize("name, edit", [
    ("special_tokens_map.json", {"cls_token": "<cls>"}),  # vocab.txt: was a TypeError from `tokenizers`
    ("tokenizer_config.json", {"pad_token": "<pad>", "added_tokens_decoder": MINILM_DECODER}),  # was padded with 0
    ("special_tokens_map.json", {"additional_special_tokens": ["<e1>"]}),  # was split into pieces
])
def test_a_special_token_missing_from_the_vocabulary_is_named(tmp_path, tokenizer_file, name, edit):
    """transformers adds it as a new token, an id past the checkpoint's embeddings."""
    import shutil

    minilm = weights.resolve_local("minilm")
    for file in (tokenizer_file, "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm, file), tmp_path)
    (tmp_path / name).write_text(json.dumps({**json.loads((tmp_path / name).read_text()), **edit}))
    key, token = next((key, value[0] if isinstance(value, list) else value)
                      for key, value in edit.items() if key != "added_tokens_decoder")
    with pytest.raises(ValueError, match="^" + re.escape(f"The {key} {token!r} of the tokenizer in {str(tmp_path)!r}")
                       + ".* is not in its vocabulary; restore those files"):
        WordPieceTokenizer(str(tmp_path))


@pytest.mark.parametrize("json_lowercase", [True, False], ids=["uncased_json", "cased_json"])  # MiniLM's, a cased
@pytest.mark.parametrize("config", [
    None, {}, {"do_lower_case": False}, {"do_lower_case": True}, {"strip_accents": False},
    {"do_lower_case": False, "strip_accents": True}, {"tokenize_chinese_chars": False},
], ids=["no_config", "empty", "cased", "uncased", "accents", "cased_stripped", "no_cjk"])
def test_tokenizer_json_takes_its_configs_normalizer_settings_as_transformers_does(tmp_path, json_lowercase, config):
    """`BertTokenizerFast` replaces `tokenizer.json`'s casing, accent and CJK settings by `tokenizer_config.json`'s
    (or their defaults: lowercase, CJK split); the WordPiece tokenizer gives the same ids."""
    import shutil

    import transformers

    source = weights.resolve_local("minilm")
    shutil.copy(os.path.join(source, "vocab.txt"), tmp_path)
    with open(os.path.join(source, "tokenizer.json")) as f:
        tokenizer_json = json.load(f)
    tokenizer_json["normalizer"]["lowercase"] = json_lowercase
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["Hello World Café", "Ünïcödé crème brûlée", "日本語 テキスト", "a [SEP] b ☃"]
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))(texts)["input_ids"]
    assert WordPieceTokenizer(str(tmp_path))(texts)["input_ids"] == theirs


@pytest.mark.parametrize("form", ["added_tokens_decoder", "added_tokens.json"])
def test_tokens_added_to_a_vocab_txt_keep_their_ids_and_are_exported(tmp_path, form):
    """`BertTokenizer.add_tokens` then `save_pretrained` writes no `tokenizer.json`: the new tokens are listed in
    `tokenizer_config.json`'s `added_tokens_decoder` and (older transformers: only) `added_tokens.json`. Read as
    transformers reads them they encode whole, as their own ids, not as WordPieces; an export carries them."""
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "film", "cases", "rise", "co", "##vid", "##19", "<",
             ">", "ent", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    slow = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    slow.add_tokens(["covid19", "<ent>"])
    slow.add_special_tokens({"additional_special_tokens": ["<sp>"]})
    saved = tmp_path / "saved"
    slow.save_pretrained(str(saved))
    assert not (saved / "tokenizer.json").exists() and (saved / "added_tokens.json").exists()
    if form == "added_tokens.json":
        config = json.loads((saved / "tokenizer_config.json").read_text())
        del config["added_tokens_decoder"]
        (saved / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["COVID19 cases <ent> rise <sp> a film", "<SP> covid19s a<ent>film"]
    theirs = transformers.BertTokenizerFast.from_pretrained(str(saved))(texts)["input_ids"]
    assert theirs == transformers.AutoTokenizer.from_pretrained(str(saved))(texts)["input_ids"]
    assert {16, 17, 18} <= set(theirs[0])  # covid19, <ent>, <sp>: the ids past the vocabulary
    assert WordPieceTokenizer(str(saved))(texts)["input_ids"] == theirs
    exported = str(tmp_path / "export")
    weights.export(BertClassifier(TINY), str(saved), exported)
    assert os.path.isfile(os.path.join(exported, "added_tokens.json"))
    assert WordPieceTokenizer(exported)(texts)["input_ids"] == theirs


@pytest.mark.parametrize("tokenizer_file", ["tokenizer.json", "vocab.txt"])
def test_an_export_to_a_tensorflow_filesystem_is_the_local_one_and_its_tokenizer_reads_back(tmp_path,
                                                                                          tokenizer_file):
    """`weights.export` writes through `tf.io.gfile` (ram:// here, gs:// for a user) the very bytes it writes
    locally, and `WordPieceTokenizer` reads them there, a vocab.txt with added tokens included."""
    import shutil

    import tensorflow as tf

    source = tmp_path / "source"
    source.mkdir()
    minilm = weights.resolve_local("minilm")
    if tokenizer_file == "tokenizer.json":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(minilm, name), source)
    else:
        (source / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "film"]) + "\n")
        (source / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
        (source / "added_tokens.json").write_text(json.dumps({"covid19": 7}))
    model = BertClassifier(TINY)
    local, remote = str(tmp_path / "export"), f"ram://{tmp_path.name}/export"
    for target in (local, remote):
        weights.export(model, str(source), target, {"metrics.json": {"accuracy": 0.5}})
    names = sorted(os.listdir(local))
    assert sorted(tf.io.gfile.listdir(remote)) == names and tokenizer_file in names
    for name in names:
        with tf.io.gfile.GFile(f"{remote}/{name}", "rb") as f:
            assert f.read() == (tmp_path / "export" / name).read_bytes(), name
    texts = ["A film, covid19 a FILM", "word " * 30]
    expected = WordPieceTokenizer(local)(texts)["input_ids"]
    assert WordPieceTokenizer(remote)(texts)["input_ids"] == expected
    assert WordPieceTokenizer(remote).model_max_length == WordPieceTokenizer(local).model_max_length


def test_truncation_without_max_length_cuts_at_model_max_length(tmp_path):
    """As transformers: `truncation=True` and no `max_length` cut at the checkpoint's `model_max_length`."""
    import shutil

    import transformers

    long_text = ["word " * 600]
    minilm = weights.resolve_local("minilm")
    ours = WordPieceTokenizer(minilm)
    theirs = transformers.BertTokenizerFast.from_pretrained(minilm)
    assert len(ours(long_text)["input_ids"][0]) == 512
    assert ours(long_text)["input_ids"] == theirs(long_text, truncation=True)["input_ids"]
    assert len(ours(long_text, truncation=False)["input_ids"][0]) == 602
    shutil.copy(os.path.join(minilm, "vocab.txt"), tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    assert len(WordPieceTokenizer(str(tmp_path))(long_text, truncation=True)["input_ids"][0]) == 16
    # A config that sets no limit: none of the tokenizer's own (the model's positions are the limit), as transformers.
    (tmp_path / "tokenizer_config.json").write_text("{}")
    ours = WordPieceTokenizer(str(tmp_path))
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert ours(long_text)["input_ids"] == theirs(long_text, truncation=True)["input_ids"]
    assert len(ours(long_text)["input_ids"][0]) == 602


def test_minilm_logits_equal_tf_bert_for_sequence_classification(sst2_batch):
    from tf_lm.bert import hub

    _, batch = sst2_batch
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    ours = BertClassifier.from_pretrained("minilm", num_labels=2)
    theirs = hub.load_classifier("minilm", num_labels=2)
    copy_classifier(theirs, ours)
    np.testing.assert_allclose(ours(batch).numpy(), theirs(batch).logits.numpy(), atol=1e-4)


def test_random_config_tf_named_checkpoint_loads_with_its_head_and_equal_logits(sst2_batch, tmp_path):
    """A config no other test uses, saved by transformers' TF class (TF names, `bert/` prefix, a 3-class head)."""
    import transformers

    config = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=80, max_position_embeddings=80, type_vocab_size=3,
                                     num_labels=3, hidden_act="gelu")
    transformers.set_seed(1)
    theirs = transformers.TFBertForSequenceClassification(config)
    _, batch = sst2_batch
    # Segments 0, 1 and 2 across each row (as sentence pairs have): single sentences alone never read the type table.
    length = batch["input_ids"].shape[1]
    batch = {**batch, "token_type_ids": np.broadcast_to(np.arange(length) * 3 // length,
                                                         batch["input_ids"].shape).astype("int32")}
    theirs(batch)
    # Every weight but the embedding tables moved by noise: logits far from 0, so another GELU shows; the tables
    # keep their std 0.02, so the embedding LayerNorm's input variance (~1e-3) is small enough for its eps to show.
    rng = np.random.default_rng(0)
    for weight in theirs.weights:
        if "embeddings" in weight.name and "LayerNorm" not in weight.name:
            continue
        weight.assign(weight.numpy() + rng.normal(scale=0.2, size=weight.shape).astype("float32"))
    theirs.save_pretrained(str(tmp_path), safe_serialization=True)
    ours = BertClassifier.from_pretrained(str(tmp_path))
    assert ours.config.num_labels == 3 and ours.config.type_vocab_size == 3
    np.testing.assert_allclose(ours(batch).numpy(), theirs(batch).logits.numpy(), atol=1e-4)


def test_bidirectional_mask_padding_is_invisible_and_every_token_is_seen():
    model = BertClassifier(dataclasses.replace(TINY, initializer_range=0.5))  # large weights: visible effects
    ids = np.array([[5, 6, 7, 8, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 0, 0]], np.int32)
    logits = model({"input_ids": ids, "attention_mask": mask}).numpy()
    other_padding = ids.copy()
    other_padding[0, 4:] = 9
    np.testing.assert_allclose(model({"input_ids": other_padding, "attention_mask": mask}).numpy(), logits,
                               atol=1e-6)
    # [CLS] (position 0) reads the whole sentence: changing its last real token changes the logits.
    later = ids.copy()
    later[0, 3] = 11
    assert np.abs(model({"input_ids": later, "attention_mask": mask}).numpy() - logits).max() > 1e-4


def test_packed_rows_give_the_unpacked_logits():
    """Eight sequences (lengths 0-11, segment ids, padding) packed into rows of 11 by first-fit decreasing: fewer
    rows, and in float32 the logits of every real sequence equal the unpacked model's, eagerly and traced."""
    import tensorflow as tf

    from tf_lm.bert.model import _pack

    model = BertClassifier(dataclasses.replace(TINY, type_vocab_size=2, initializer_range=0.5))
    rng = np.random.default_rng(0)
    lengths = [3, 9, 1, 5, 11, 2, 7, 0]  # the last a zero-weight filler row: it only needs finite logits
    batch = padded([rng.integers(1, 30, size=n) for n in lengths])
    segments = rng.integers(0, 2, size=batch["input_ids"].shape).astype("int32")
    batch["token_type_ids"] = segments * batch["attention_mask"]
    rows, _, positions, allowed, _ = (np.asarray(t) for t in _pack(
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]))
    # 11 | 9 2 | 7 3 1 | 5 and the filler's one token
    assert rows.shape == (4, 11) and sorted(np.count_nonzero(allowed.any(-1), axis=1)) == [6, 11, 11, 11]
    assert positions.max() == 10 and (allowed == np.swapaxes(allowed, 1, 2)).all()  # restarts; symmetric blocks
    unpacked = model(batch).numpy()
    for packed in (model(batch, packed=True), tf.function(lambda b: model(b, packed=True))(batch)):
        np.testing.assert_allclose(np.asarray(packed)[:7], unpacked[:7], atol=1e-5)
        assert np.isfinite(np.asarray(packed)).all()


def test_packing_an_empty_batch_gives_no_logits_and_zero_gradients():
    """Under a mirrored strategy a short last batch leaves a replica nothing: its empty share packs into no rows,
    eagerly and traced, and adds nothing to the gradients."""
    import tensorflow as tf

    model = BertClassifier(TINY)
    empty = {"input_ids": np.zeros((0, 5), np.int32), "attention_mask": np.zeros((0, 5), np.int32)}
    assert model(empty, packed=True, training=True).shape == (0, 3)

    @tf.function
    def gradients(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(batch, packed=True, training=True))
        return tape.gradient(loss, model.trainable_variables)

    for gradient in gradients(empty):
        np.testing.assert_array_equal(tf.convert_to_tensor(gradient), 0.0)


def test_keras_round_trip_and_distinct_initial_weights(tmp_path):
    model = BertClassifier(TINY)
    batch = {"input_ids": np.array([[1, 2, 3]], np.int32), "attention_mask": np.ones((1, 3), np.int32)}
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert restored.config == TINY
    np.testing.assert_allclose(restored(batch).numpy(), model(batch).numpy(), atol=1e-6)
    matrices = [np.asarray(w).ravel()[:16].tobytes() for w in model.weights if len(w.shape) == 2]
    assert len(set(matrices)) == len(matrices), "two weight matrices start identical"


def test_export_reloads_in_tf_bert_for_sequence_classification(sst2_batch, tmp_path):
    from tf_lm.bert import hub

    ours = BertClassifier.from_pretrained("minilm", num_labels=2, label_names=["negative", "positive"])
    copy_classifier(ours, ours)
    target = str(tmp_path / "export")
    weights.export(ours, weights.resolve_local("minilm"), target, extra_json={"metrics.json": {"accuracy": 0.5}})
    theirs = hub.load_classifier(target)
    _, batch = sst2_batch
    np.testing.assert_allclose(theirs(batch).logits.numpy(), ours(batch).numpy(), atol=1e-4)
    assert hub.label_names(theirs) == ["negative", "positive"]
    again = BertClassifier.from_pretrained(target)
    assert again.config.labels == ["negative", "positive"]
    np.testing.assert_allclose(again(batch).numpy(), ours(batch).numpy(), atol=1e-6)
    with open(os.path.join(target, "config.json")) as f:
        assert json.load(f)["architectures"] == ["BertForSequenceClassification"]


def test_missing_or_misshapen_encoder_weight_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    source = weights.resolve_local("minilm")
    state = load_file(os.path.join(source, "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(source, "config.json")).read())
    save_file({k: v for k, v in state.items() if k != "encoder.layer.3.output.dense.weight"},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder.layer.3.output.dense.weight"):
        BertClassifier.from_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 1024}))
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="intermediate.dense.weight' has shape"):
        BertClassifier.from_pretrained(str(tmp_path))


def test_bad_configs_and_sources_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="Received: `hidden_size=10`, `num_attention_heads=4`"):
        BertConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="relu")
    with pytest.raises(ValueError, match="local checkpoints only"):
        BertClassifier.from_pretrained("some-org/some-bert")
    with pytest.raises(FileNotFoundError, match="No config.json"):
        BertClassifier.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        BertClassifier.from_pretrained(str(tmp_path))


def exported_tiny(directory) -> str:
    """`TINY` exported as a Hugging Face checkpoint into `directory`, with MiniLM's tokenizer files."""
    weights.export(BertClassifier(TINY), weights.resolve_local("minilm"), str(directory))
    return str(directory)


@pytest.mark.parametrize("text, match", [
    ("[]", r"is damaged: it holds (an array|null), not an object; restore or remove it\."),
    ("null", r"is damaged: it holds (an array|null), not an object"),
    ('{"model_type": "bert",\n', r"is damaged: it is not valid JSON \(Expecting property name .*line 2"),
])
def test_a_config_json_that_is_not_a_json_object_is_named(tmp_path, text, match):
    """Valid JSON of another kind failed in `.get` (an AttributeError, printed as a traceback); invalid JSON with
    json's words alone (`Expecting value: line 2 column 1`), naming no file."""
    model_dir = exported_tiny(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path)) + " " + match):
        BertClassifier.from_pretrained(model_dir)


@pytest.mark.parametrize("field, value, match", [
    ("hidden_dropout_prob", "0.1", "BertConfig.hidden_dropout_prob must be a finite number. Received: "
                                   "`hidden_dropout_prob='0.1'`"),
    ("classifier_dropout", [0.1], "BertConfig.classifier_dropout must be a finite number"),
    ("layer_norm_eps", "1e-12", "BertConfig.layer_norm_eps must be a finite number"),
    ("initializer_range", True, "BertConfig.initializer_range must be a finite number"),
    ("pad_token_id", "0", "BertConfig.pad_token_id must be an integer >= 0"),
    ("hidden_size", "8", "BertConfig.hidden_size must be an integer >= 1"),
    ("architectures", "BertForSequenceClassification", "architectures must be a list of class names"),
    ("architectures", 5, "architectures must be a list of class names"),
    ("id2label", 5, "id2label must map the class ids 0, 1, ... to distinct names"),
    ("id2label", ["a", "b", "c"], "id2label must map the class ids"),
    ("id2label", {"0": "a", "1": "a", "2": "c"}, "id2label must map the class ids"),
    ("id2label", {"0": "a", "1": "", "2": "c"}, "id2label must map the class ids"),
    ("id2label", {"1": "a", "2": "b", "3": "c"}, "id2label must map the class ids"),
    ("id2label", {"0": "a"}, "A classifier needs `num_labels` >= 2. Received: `num_labels=1`"),
    ("model_type", "gpt2", "Only BERT checkpoints load into BertClassifier. Received: model_type='gpt2'"),
])
def test_a_config_json_field_of_the_wrong_type_is_refused_naming_the_file(tmp_path, field, value, match):
    """A damaged value failed in a comparison (a TypeError, printed as a traceback), or passed unchecked into the
    layers; each is refused in one sentence that names the file."""
    model_dir = exported_tiny(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {match}")):
        BertClassifier.from_pretrained(model_dir)


def test_an_override_that_does_not_fit_is_not_blamed_on_the_config_json():
    hf_config = TINY.to_hf()
    with pytest.raises(ValueError, match=r"^2 label names for 3 labels"):
        BertConfig.from_hf(hf_config, source="/x/config.json", num_labels=3, label_names=("a", "b"))
    with pytest.raises(ValueError, match=r"^A classifier needs `num_labels` >= 2. Received: `num_labels='2'`"):
        BertConfig(num_labels="2")


@pytest.mark.parametrize("name", ["tokenizer_config.json", "added_tokens.json"])
def test_a_tokenizer_file_that_is_not_a_json_object_is_named(tmp_path, name):
    import shutil

    shutil.copy(os.path.join(weights.resolve_local("minilm"), "vocab.txt"), tmp_path)  # added_tokens.json: with it
    (tmp_path / name).write_text("[]")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} is damaged: it holds an array, not an object")):
        WordPieceTokenizer(str(tmp_path))


# Each a TypeError, AttributeError or KeyError from `tokenizers` or in our code (printed by the scripts as a
# traceback), or, for model_max_length "abc", int()'s ValueError naming neither file nor key; a string
# model_input_names makes transformers' tokenizer return the ids alone, without a word.
BAD_TOKENIZER_CONFIG_VALUES = [
    ("do_lower_case", "yes", "its do_lower_case is 'yes', not true or false"),
    ("strip_accents", "no", "its strip_accents is 'no', not true, false or null"),
    ("tokenize_chinese_chars", None, "its tokenize_chinese_chars is None, not true or false"),
    ("model_max_length", "abc", "its model_max_length is 'abc', not a positive integer"),
    ("model_max_length", [512], "its model_max_length is [512], not a positive integer"),
    ("pad_token", 5, "its pad_token is 5, not a token (a string, or an object with a string content)"),
    ("unk_token", {"text": "[UNK]"}, "its unk_token is {'text': '[UNK]'}, not a token"),
    ("additional_special_tokens", ["<sp>", 5], "its additional_special_tokens[1] is 5, not a token"),
    ("added_tokens_decoder", {"8": "tok"}, "its added_tokens_decoder['8'] is 'tok', not an object with a string "
                                           "content and flags"),
    ("added_tokens_decoder", {"x": {"content": "tok"}}, "its added_tokens_decoder has the key 'x', not a token id"),
    ("tokenizer_class", 5, "its tokenizer_class is 5, not a class name or null"),
    ("model_input_names", "input_ids", "its model_input_names is 'input_ids', not a list of input names"),
    ("model_input_names", ["input_ids", 1], "its model_input_names is ['input_ids', 1], not a list of input names"),
]


# Each a TypeError from transformers (the hf backend) or our code, printed as a traceback.
BAD_SPECIAL_TOKENS_MAP_VALUES = [
    ("cls_token", True, "its cls_token is True, not a token (a string, or an object with a string content)"),
    ("unk_token", ["[UNK]"], "its unk_token is ['[UNK]'], not a token"),
    ("bos_token", 1.5, "its bos_token is 1.5, not a token (a string, or an object with a string content) or null"),
    ("additional_special_tokens", ["<sp>", 5], "its additional_special_tokens[1] is 5, not a token"),
]


@pytest.mark.parametrize("name, key, value, message", [
    *(("tokenizer_config.json", *case) for case in BAD_TOKENIZER_CONFIG_VALUES),
    *(("special_tokens_map.json", *case) for case in BAD_SPECIAL_TOKENS_MAP_VALUES),
])
def test_a_tokenizer_file_value_of_another_type_is_named_with_its_key(tmp_path, name, key, value, message):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    path = tmp_path / name
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path} is damaged: {message}")):
        WordPieceTokenizer(str(tmp_path))


@pytest.mark.parametrize("architectures, num_labels", [
    (["BertForSequenceClassification"], 3), (["BertModel", "BertForSequenceClassification"], 3),
    (["BertModel"], 2), (None, 2), ([], 2),
])
def test_config_takes_labels_only_from_a_classifier_checkpoint(architectures, num_labels):
    hf_config = {**TINY.to_dict(), "architectures": architectures, "id2label": {"0": "x", "1": "y", "2": "z"}}
    del hf_config["num_labels"], hf_config["label_names"]
    config = BertConfig.from_hf(hf_config)
    assert config.num_labels == num_labels
    assert config.label_names == (("x", "y", "z") if num_labels == 3 else BertConfig.label_names)


def test_classifier_dropout_is_read_written_and_used_as_transformers_does(tmp_path):
    """transformers drops out the pooled output at `classifier_dropout`, or `hidden_dropout_prob` when it is null;
    the field survives `config.json` and `.keras` round trips, and a config saved without it still loads."""
    import transformers

    shape = {"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 16, "max_position_embeddings": 12}
    hf_config = transformers.BertConfig(**shape, classifier_dropout=0.5).to_dict()
    config = BertConfig.from_hf(hf_config)
    assert config.classifier_dropout == 0.5
    theirs = transformers.TFBertForSequenceClassification(transformers.BertConfig(**hf_config))
    model = BertClassifier(config)
    assert model.classifier_dropout.rate == theirs.dropout.rate == 0.5
    assert transformers.BertConfig.from_dict(config.to_hf()).classifier_dropout == 0.5
    unset = BertConfig.from_hf(transformers.BertConfig(**shape, hidden_dropout_prob=0.2,
                                                       attention_probs_dropout_prob=0.2).to_dict())
    assert unset.classifier_dropout is None and BertClassifier(unset).classifier_dropout.rate == 0.2
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert keras.models.load_model(path, safe_mode=True).classifier_dropout.rate == 0.5
    older = {key: value for key, value in TINY.to_dict().items() if key != "classifier_dropout"}
    assert BertClassifier.from_config({"config": older}).config == TINY
    with pytest.raises(ValueError, match="Received: `classifier_dropout=1.0`"):
        BertConfig(classifier_dropout=1.0)


def test_checkpoint_tensors_nothing_uses_are_named(tmp_path):
    """A `config.json` of 1 layer over weights of 2 is refused naming the unused layer; the tensors transformers
    skips too (position ids, pretraining heads) and a head of another class count (a new head) are not unused."""
    from safetensors.numpy import load_file, save_file

    target = str(tmp_path / "checkpoint")
    weights.export(BertClassifier(TINY), weights.resolve_local("minilm"), target)
    config_path, weights_path = tmp_path / "checkpoint" / "config.json", os.path.join(target, "model.safetensors")
    hf_config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**hf_config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match=r"no place for: encoder\.layer\.1\.\* \(16 tensors\);"):
        BertClassifier.from_pretrained(target)
    config_path.write_text(json.dumps(hf_config))
    state = load_file(weights_path)
    state["bert.embeddings.position_ids"] = np.arange(12)[None]
    state["cls.predictions.bias"] = np.zeros(30, np.float32)
    save_file(state, weights_path, metadata={"format": "pt"})
    assert BertClassifier.from_pretrained(target).config.num_labels == 3
    assert BertClassifier.from_pretrained(target, num_labels=2).config.num_labels == 2
    state["bert.pooler.extra.weight"] = np.zeros(2, np.float32)
    save_file(state, weights_path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"no place for: pooler\.extra\.weight;"):
        BertClassifier.from_pretrained(target)


def test_num_labels_equal_to_the_checkpoints_keeps_its_label_names():
    """As transformers' `num_labels`: the checkpoint's class names stay for as many classes, go for another count."""
    import transformers

    hf_config = TINY.to_hf()  # a classifier of 3 classes named a, b, c
    for num_labels in (3, 4):
        theirs = transformers.BertConfig.from_dict(hf_config, num_labels=num_labels)
        ours = BertConfig.from_hf(hf_config, num_labels=num_labels)
        assert ours.labels == [theirs.id2label[i] for i in range(num_labels)]
    assert BertConfig.from_hf(hf_config, num_labels=3).label_names == ("a", "b", "c")
    assert BertConfig.from_hf(hf_config, num_labels=4).label_names is None
    assert BertConfig.from_hf(hf_config, num_labels=3, label_names=("x", "y", "z")).label_names == ("x", "y", "z")


def test_get_config_keeps_the_dtype_policy():
    model = BertClassifier(TINY, dtype="mixed_bfloat16")
    clone = BertClassifier.from_config(model.get_config())
    assert clone.dtype_policy.name == "mixed_bfloat16" and clone.config == TINY


def test_label_names_alone_set_the_number_of_classes(tmp_path):
    """As transformers' `id2label`: two names over a 3-class checkpoint make a new 2-class head."""
    target = str(tmp_path / "checkpoint")
    weights.export(BertClassifier(TINY), weights.resolve_local("minilm"), target)
    model = BertClassifier.from_pretrained(target, label_names=["x", "y"])
    assert model.config.num_labels == 2 and model.config.labels == ["x", "y"]


def test_added_tokens_take_their_ids_in_numeric_order(tmp_path):
    """`added_tokens_decoder` keys are ids as strings: "10" comes after "9", not before "8"."""
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]) + "\n")
    decoder = {str(i): {"content": f"tok{i}", "special": False, "normalized": True} for i in (8, 9, 10, 11)}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert WordPieceTokenizer(str(tmp_path))(["tok8 tok9 tok10 tok11"])["input_ids"] == [[2, 8, 9, 10, 11, 3]]


def test_a_file_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from tf_lm.bert import checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="^No checkpoint directory at 'model.safetensors'"):
        checkpoint.resolve_checkpoint("model.safetensors")


def test_the_head_is_the_pooler_and_the_classifier():
    """`head_lr_multiplier` applies to these: the pooler is pretrained, but it is trained as part of the head."""
    model = BertClassifier(TINY)
    head = model.pooler.trainable_variables + model.classifier.trainable_variables
    assert [v.path for v in model.head_variables()] == [v.path for v in head] and len(head) == 4


def test_export_names_the_encoder_as_bert_for_sequence_classification_does(tmp_path):
    """PyTorch's `from_pretrained` reads keys without the `bert.` prefix as a bare encoder's and drops the head."""
    from safetensors import safe_open

    target = str(tmp_path / "export")
    weights.export(BertClassifier(TINY), weights.resolve_local("minilm"), target)
    with safe_open(os.path.join(target, "model.safetensors"), framework="np") as archive:
        keys = set(archive.keys())
    assert {"bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"} <= keys
    assert all(key.startswith("bert.") for key in keys - {"classifier.weight", "classifier.bias"})


def test_the_pad_token_is_the_one_the_config_names(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[UNK]", "[CLS]", "[SEP]", "<pad>", "[MASK]", "a"]) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    assert WordPieceTokenizer(str(tmp_path)).pad_token_id == 3


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_either_offline_variable_means_the_hub_is_unreachable(monkeypatch, variable):
    """Either says "do not try the network", even where the hub would answer."""
    import socket

    from tf_lm.bert import checkpoint

    connection = type("Connection", (), {"close": lambda self: None})
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: connection())  # a reachable hub
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert checkpoint.hub_reachable()
    monkeypatch.setenv(variable, "1")
    assert not checkpoint.hub_reachable()
