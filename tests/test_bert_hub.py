"""tf_lm.bert.hub: name resolution, the torch-free safetensors loader (checked against a numpy BERT), saving."""

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tf_lm.bert import hub

SENTENCES = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés"]


@pytest.fixture(scope="module")
def tokenizer():
    return hub.load_tokenizer("minilm")


@pytest.fixture(scope="module")
def classifier():
    return hub.load_classifier("minilm", num_labels=3, label_names=["neg", "neutral", "pos"])


@pytest.fixture(scope="module")
def state():
    from safetensors.numpy import load_file

    return load_file(os.path.join(hub.resolve_checkpoint("minilm"), "model.safetensors"))


def test_import_tf_lm_does_not_import_transformers():
    """Nor does the keras backend: loading MiniLM into a BertClassifier and tokenising with its WordPiece."""
    code = (
        "import os, sys, tf_lm, tf_lm.bert, tf_lm.bert.data, tf_lm.bert.finetune\n"
        "classifier = tf_lm.bert.finetune.load_keras_classifier('minilm', 2, None, 'float32', seed=0)\n"
        "classifier.tokenizer(['a fine film'])\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
        "assert 'TF_USE_LEGACY_KERAS' not in os.environ, 'TF_USE_LEGACY_KERAS was set'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_only_the_hub_package_imports_transformers():
    """The boundary in the source: within `tf_lm/bert` only `tf_lm/bert/hub/` imports transformers or tf_keras."""
    package = Path(hub.__file__).parents[1]  # tf_lm/bert
    importing = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+(transformers|tf_keras)\b", path.read_text(), re.MULTILINE)
    )
    assert importing and all(name.startswith("hub/") for name in importing), importing


def test_resolve_checkpoint():
    assert os.path.isfile(os.path.join(hub.resolve_checkpoint("minilm"), "vocab.txt"))
    assert hub.resolve_checkpoint("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(FileNotFoundError, match="No checkpoint directory at './absent'"):
        hub.resolve_checkpoint("./absent")


def test_tokenizer_is_uncased_bert_without_padding(tokenizer):
    ids = tokenizer(["A Fine Film", "ok"])["input_ids"]
    assert ids == [[101, 1037, 2986, 2143, 102], [101, 7929, 102]]


def test_unknown_model_offline_fails_fast_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="'tf-lm-tests/no-such-model'.*unreachable.*use 'minilm' or a checkpoint"):
        hub.load_classifier("tf-lm-tests/no-such-model", num_labels=2)
    with pytest.raises(ValueError, match="no-such-model"):
        hub.load_tokenizer("tf-lm-tests/no-such-model")
    assert time.perf_counter() - start < 10


def test_unknown_model_without_offline_flag_fails_without_minutes_of_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="no-such-model"):
        hub.load_classifier("tf-lm-tests/no-such-model", num_labels=2)
    assert time.perf_counter() - start < 30


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def layer_norm(x, state, name, eps=1e-12):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * state[f"{name}.weight"] + state[f"{name}.bias"]


def numpy_bert(state, ids, mask, num_heads=12):
    """BERT straight from the PyTorch-named tensors: an independent check of transformers' name mapping."""
    batch, length = ids.shape

    def dense(x, name):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    x = (state["embeddings.word_embeddings.weight"][ids] + state["embeddings.position_embeddings.weight"][:length]
         + state["embeddings.token_type_embeddings.weight"][0])  # [B, T, D]
    x = layer_norm(x, state, "embeddings.LayerNorm")
    head_dim = x.shape[-1] // num_heads
    bias = (1.0 - mask[:, None, None, :]) * -1e9  # [B, 1, 1, T]
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layers:
        p = f"encoder.layer.{i}"
        q, k, v = (dense(x, f"{p}.attention.self.{n}").reshape(batch, length, num_heads, head_dim).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))  # [B, H, T, hd]
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + bias  # [B, H, T, T]
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)  # [B, T, D]
        x = layer_norm(dense(context, f"{p}.attention.output.dense") + x, state, f"{p}.attention.output.LayerNorm")
        h = gelu(dense(x, f"{p}.intermediate.dense"))  # [B, T, 4D]
        x = layer_norm(dense(h, f"{p}.output.dense") + x, state, f"{p}.output.LayerNorm")
    return x, np.tanh(dense(x[:, 0], "pooler.dense"))  # [B, T, D], [B, D]


def test_numpy_loader_loads_every_encoder_weight(classifier, tokenizer, state):
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    features = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    output = classifier.bert(features, training=False)
    hidden, pooled = numpy_bert(state, batch["input_ids"], batch["attention_mask"].astype(np.float32))
    real = batch["attention_mask"] == 1
    np.testing.assert_allclose(output.last_hidden_state.numpy()[real], hidden[real], atol=2e-4)
    np.testing.assert_allclose(output.pooler_output.numpy(), pooled, atol=2e-4)
    assert classifier.config.num_labels == 3 and hub.label_names(classifier) == ["neg", "neutral", "pos"]
    assert hub.position_limit(classifier) == 512


def test_head_variables_are_the_pooler_and_the_classifier(classifier):
    names = [v.name.split("/", 1)[1] for v in hub.head_variables(classifier)]
    assert names == ["bert/pooler/dense/kernel:0", "bert/pooler/dense/bias:0", "classifier/kernel:0",
                     "classifier/bias:0"]


def test_mixed_bfloat16_classifier_keeps_float32_weights_and_the_global_policy(classifier, tokenizer, state):
    import tf_keras

    model = hub.load_classifier("minilm", num_labels=3, precision="mixed_bfloat16")
    assert tf_keras.mixed_precision.global_policy().name == "float32", "the policy must not leak past loading"
    query = model.bert.encoder.layer[0].attention.self_attention.query
    assert query.compute_dtype == "bfloat16" and query.kernel.dtype == "float32"
    np.testing.assert_array_equal(query.kernel.numpy(), state["encoder.layer.0.attention.self.query.weight"].T)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    features = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    pooled = model.bert(features, training=False).pooler_output
    assert pooled.dtype == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa: the same encoder, to within a few hundredths on tanh outputs.
    reference = classifier.bert(features, training=False).pooler_output.numpy()
    np.testing.assert_allclose(pooled.numpy().astype(np.float32), reference, atol=0.05)
    with pytest.raises(ValueError, match="Unknown `precision='mixed_float16'`"):
        hub.load_classifier("minilm", precision="mixed_float16")


def test_save_pretrained_round_trip_matches_transformers_loader(classifier, tokenizer, tmp_path):
    target = tmp_path / "best"
    hub.save_pretrained(str(target), classifier, tokenizer, {"metrics.json": {"accuracy": 0.5}})
    hub.save_pretrained(str(target), classifier, tokenizer, {"metrics.json": {"accuracy": 0.75}})  # replaces it
    assert sorted(os.listdir(tmp_path)) == ["best"], "staging or retired directories were left behind"
    assert '"accuracy": 0.75' in (target / "metrics.json").read_text()
    # The saved safetensors are TF-format, so this goes through transformers' own from_pretrained.
    reloaded = hub.load_classifier(str(target))
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    del batch["token_type_ids"]
    np.testing.assert_allclose(reloaded(batch).logits.numpy(), classifier(batch).logits.numpy(), atol=1e-6)
    assert hub.label_names(reloaded) == ["neg", "neutral", "pos"]
    assert hub.load_tokenizer(str(target))(["A Fine Film"])["input_ids"] == [[101, 1037, 2986, 2143, 102]]


def test_save_pretrained_to_a_tensorflow_filesystem_writes_the_local_files(classifier, tokenizer, tmp_path):
    """transformers writes local files only; on a TensorFlow filesystem (ram:// here, gs:// for a user) the same
    files arrive through a local scratch directory, and nothing is left behind beside the target."""
    import tensorflow as tf

    local, remote = tmp_path / "best", f"ram://{tmp_path.name}/run/best"
    for target in (str(local), remote):
        hub.save_pretrained(target, classifier, tokenizer, {"metrics.json": {"accuracy": 0.5}})
    assert sorted(tf.io.gfile.listdir(remote)) == sorted(os.listdir(local))
    for name in os.listdir(local):
        with tf.io.gfile.GFile(f"{remote}/{name}", "rb") as f:
            assert f.read() == (local / name).read_bytes(), name
    assert tf.io.gfile.listdir(f"ram://{tmp_path.name}/run") == ["best"]


def write_tiny_classifier(directory, writer: str, num_hidden_layers: int = 1) -> None:
    """A 2-class BERT classifier checkpoint of a tiny shape, written by our exporter (PyTorch-named safetensors,
    `writer="keras"`) or by transformers' `save_pretrained` (TF-format safetensors, `writer="hf"`)."""
    import transformers

    from tf_lm.bert import weights
    from tf_lm.bert.config import BertConfig
    from tf_lm.bert.model import BertClassifier

    shape = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": num_hidden_layers, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 16}
    if writer == "keras":
        weights.export(BertClassifier(BertConfig(**shape)), hub.resolve_checkpoint("minilm"), str(directory))
    else:
        model = transformers.TFBertForSequenceClassification(transformers.BertConfig(**shape, num_labels=2))
        model(model.dummy_inputs)
        model.save_pretrained(str(directory), safe_serialization=True)


@pytest.mark.parametrize("writer", ["keras", "hf"])
def test_a_fine_tuned_checkpoint_takes_a_new_head_of_other_classes(tmp_path, writer):
    """As `BertClassifier.from_pretrained` does: the encoder and pooler are loaded, the head of 3 classes is new."""
    write_tiny_classifier(tmp_path, writer)
    two = hub.load_classifier(str(tmp_path))
    three = hub.load_classifier(str(tmp_path), num_labels=3)
    assert tuple(two.classifier.kernel.shape) == (16, 2) and tuple(three.classifier.kernel.shape) == (16, 3)
    for old, new in zip(two.bert.weights, three.bert.weights, strict=True):
        np.testing.assert_array_equal(new.numpy(), old.numpy())


@pytest.mark.parametrize("writer", ["keras", "hf"])
def test_weights_the_config_has_no_place_for_are_refused(tmp_path, writer):
    import json

    write_tiny_classifier(tmp_path, writer, num_hidden_layers=2)
    hub.load_classifier(str(tmp_path))  # as written: every weight has its place
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match=r"holds weights a TFBertForSequenceClassification of its config has no "
                                         r"place for \(16, e\.g\. \[.*layer(\.|_\._)1[./]"):
        hub.load_classifier(str(tmp_path))


def test_checkpoint_missing_an_encoder_weight_is_rejected(state, tmp_path):
    from safetensors.numpy import save_file

    broken = {k: v for k, v in state.items() if k != "encoder.layer.3.output.dense.weight"}
    save_file(broken, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(open(os.path.join(hub.resolve_checkpoint("minilm"), "config.json")).read())
    with pytest.raises(ValueError, match="encoder.layer.3.output.dense.weight"):
        hub.load_classifier(str(tmp_path), num_labels=2)


def test_directory_without_weights_or_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="No config.json"):
        hub.load_classifier(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match="No model.safetensors or tf_model.h5"):
        hub.load_classifier(str(tmp_path))


@pytest.mark.parametrize("text, match", [
    ("[]", r"is damaged: it holds (an array|null), not an object; restore or remove it\."),
    ('{"model_type": "bert",\n', r"is damaged: it is not valid JSON \(Expecting property name .*line 2"),
])
def test_a_config_json_that_is_not_a_json_object_is_named_as_the_keras_backend_names_it(tmp_path, text, match):
    """transformers failed on `[]` with a TypeError deep in its config code (a 46-line traceback), and said an
    invalid file is "not a valid JSON file" in words of its own."""
    write_tiny_classifier(tmp_path, "keras")
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json")) + " " + match):
        hub.load_classifier(str(tmp_path))


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
def test_a_tokenizer_file_that_is_not_a_json_object_is_named(tmp_path, name):
    """transformers failed on `[]` in a subscript (a TypeError, printed as a traceback)."""
    write_tiny_classifier(tmp_path, "keras")
    (tmp_path / name).write_text("[]")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} is damaged: it holds an array, not an object")):
        hub.load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("key, value, message", [
    # A TypeError (or AttributeError) from transformers or `tokenizers`, printed as a traceback.
    ("do_lower_case", "yes", "its do_lower_case is 'yes', not true or false"),
    ("additional_special_tokens", [5], "its additional_special_tokens[0] is 5, not a token"),
    ("added_tokens_decoder", None, "its added_tokens_decoder is None, not an object of tokens by id"),
    # Loaded as is, then compared with the model's positions by `finetune` (a TypeError).
    ("model_max_length", "abc", "its model_max_length is 'abc', not a positive integer"),
    ("tokenizer_class", 5, "its tokenizer_class is 5, not a class name or null"),
])
def test_a_tokenizer_config_value_of_another_type_is_named_with_its_key(tmp_path, key, value, message):
    import json
    import shutil

    minilm = hub.resolve_checkpoint("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(minilm, name), tmp_path)
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path} is damaged: {message}")):
        hub.load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("key, value", [("cls_token", True), ("additional_special_tokens", [5])])
def test_a_special_tokens_map_value_of_another_type_is_named_with_its_key(tmp_path, key, value):
    """transformers raised a TypeError ("Special token cls_token has to be either str or AddedToken")."""
    import json
    import shutil

    minilm = hub.resolve_checkpoint("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm, name), tmp_path)
    path = tmp_path / "special_tokens_map.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path} is damaged: its {key}")):
        hub.load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("key, value, message", [
    # Each a TypeError or KeyError while transformers builds the model, printed as a traceback.
    ("model_type", [], "its model_type is [], not a model type name"),
    ("num_hidden_layers", "2", "its num_hidden_layers is '2', not a positive integer"),
    ("hidden_size", None, "its hidden_size is None, not a positive integer"),
    ("vocab_size", 1.5, "its vocab_size is 1.5, not a positive integer"),
    ("hidden_act", "swishy", "its hidden_act is 'swishy', not an activation transformers knows (gelu, "),
])
def test_a_config_json_value_of_another_type_is_named_with_its_key(tmp_path, key, value, message):
    import json

    write_tiny_classifier(tmp_path, "keras")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path} is damaged: {message}")):
        hub.load_classifier(str(tmp_path))


def test_label_names_must_match_num_labels_and_name_each_class_once():
    match = re.escape("3 label names for 2 labels. Received: `label_names=['a', 'b', 'c']`")
    with pytest.raises(ValueError, match=match):
        hub.load_classifier("minilm", num_labels=2, label_names=["a", "b", "c"])
    for names in (["a", "a"], ["a", ""], ["a", None]):
        with pytest.raises(ValueError, match=re.escape(f"must be distinct, non-empty strings. Received: "
                                                       f"`label_names={names}`")):
            hub.load_classifier("minilm", num_labels=2, label_names=names)


@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": 0.0, "num_train_steps": 10, "warmup_steps": 1},
     "`learning_rate` and `num_train_steps` must be positive. Received: `learning_rate=0.0`, `num_train_steps=10`"),
    ({"learning_rate": 1e-4, "num_train_steps": 10, "warmup_steps": 11},
     r"`warmup_steps` must lie in \[0, 10\]. Received: `warmup_steps=11`"),
])
def test_create_optimizer_rejects_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hub.create_optimizer(**kwargs)


def test_create_optimizer_warms_up_then_decays_linearly():
    optimizer = hub.create_optimizer(1e-4, num_train_steps=100, warmup_steps=10)
    schedule = optimizer.learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(rates, [0.0, 5e-5, 1e-4, 5e-5, 0.0], atol=1e-9)


@pytest.mark.parametrize("weight_decay, name", [(0.01, "AdamWeightDecay"), (0.0, "Adam")])
def test_create_optimizer_decays_weights_only_when_asked(weight_decay, name):
    optimizer = hub.create_optimizer(1e-4, num_train_steps=10, warmup_steps=1, weight_decay=weight_decay)
    assert type(optimizer).__name__ == name


def test_export_refuses_a_directory_with_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        hub.export_tf_checkpoint("minilm", str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"
