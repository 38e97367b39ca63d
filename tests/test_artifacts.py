import json
import os

import numpy as np
import pytest

from tf_lm import LMConfig, TransformerLM
from tf_lm.artifacts import load_model_dir, read_config, save_model_dir
from tf_lm.data import CharTokenizer
from tf_lm.fileio import EXPORT_MARKER

TEXT = "hello tf_lm, hello world"


def _saved(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_model_dir(str(tmp_path), model, tokenizer)
    return model, tokenizer


def test_round_trip_carries_model_config_and_tokenizer(tmp_path):
    model, tokenizer = _saved(tmp_path)
    restored, restored_tokenizer = load_model_dir(str(tmp_path))
    ids = np.array([tokenizer.encode("hello w")], dtype="int32")
    np.testing.assert_array_equal(np.asarray(restored(ids)), np.asarray(model(ids)))
    assert restored_tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    assert read_config(str(tmp_path)) == model.config
    assert os.listdir(tmp_path) == ["model"]


def test_missing_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train one with"):
        load_model_dir(str(tmp_path / "nothing"))


def test_corrupt_model_file_is_one_clear_error(tmp_path):
    _saved(tmp_path)
    model_file = tmp_path / "model" / "model.keras"
    for damage, reason in ((lambda: model_file.write_bytes(b"not a zip"), "it is not a .keras zip archive"),
                           (lambda: model_file.unlink() or model_file.mkdir(), "it is a directory")):
        damage()
        with pytest.raises(ValueError, match=f"damaged or not a tf_lm model \\({reason}") as error:
            load_model_dir(str(tmp_path))
        assert "\n" not in str(error.value)


def test_weights_that_do_not_fit_the_models_config_are_one_line(tmp_path):
    """Keras's message lists every layer that could not be loaded, one paragraph after another."""
    import zipfile

    _saved(tmp_path)
    model_file = tmp_path / "model" / "model.keras"
    with zipfile.ZipFile(model_file) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["config.json"] = entries["config.json"].replace(b'"n_embd": 8', b'"n_embd": 4')
    with zipfile.ZipFile(model_file, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    expected = r"could not be loaded\. Example error message .*: Layer '\w+' expected"
    with pytest.raises(ValueError, match=expected) as error:
        load_model_dir(str(tmp_path))
    assert "\n" not in str(error.value)


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    _saved(tmp_path)
    CharTokenizer.from_text(TEXT + "XYZ!?").save(str(tmp_path / "model" / "tokenizer"))
    with pytest.raises(ValueError, match="mixes files from different runs"):
        load_model_dir(str(tmp_path))


def test_a_tokenizer_edited_since_the_save_is_refused_and_one_saved_before_fingerprints_loads(tmp_path):
    _, tokenizer = _saved(tmp_path)
    path = tmp_path / "model" / "tokenizer" / "char_tokenizer.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "chars": saved["chars"][1:]}))  # a character lost: later ids shift by one
    with pytest.raises(ValueError, match=r"The tokenizer in '.*' is not the one its model was saved with: its files "
                                         r"were edited or damaged since"):
        load_model_dir(str(tmp_path))
    path.write_text(json.dumps(saved))
    marker = tmp_path / "model" / EXPORT_MARKER
    recorded = json.loads(marker.read_text())
    assert recorded["tokenizer_fingerprint"] == tokenizer.fingerprint
    del recorded["tokenizer_fingerprint"]  # a model/ saved before the marker recorded it
    marker.write_text(json.dumps(recorded))
    assert load_model_dir(str(tmp_path))[1].encode(TEXT) == tokenizer.encode(TEXT)


def test_a_marker_with_a_fingerprint_of_another_type_is_called_damaged(tmp_path):
    _saved(tmp_path)
    marker = tmp_path / "model" / EXPORT_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "tokenizer_fingerprint": 123}))
    with pytest.raises(ValueError, match=rf"^{marker} is damaged: its tokenizer_fingerprint is a number, not a "
                                         "string; write the directory again.$"):
        load_model_dir(str(tmp_path))


def test_a_truncated_model_file_and_the_model_subdirectory_itself_are_named_so(tmp_path):
    _saved(tmp_path)
    model_file = tmp_path / "model" / "model.keras"
    with pytest.raises(FileNotFoundError, match=rf"pass the run directory that holds it: '{tmp_path}'\.$"):
        load_model_dir(str(tmp_path / "model"))
    model_file.write_bytes(model_file.read_bytes()[:3000])  # the zip's header kept, its directory lost
    with pytest.raises(ValueError, match=r"\(it is not a \.keras zip archive: cut short, or another kind of file\)"):
        load_model_dir(str(tmp_path))


def test_a_failed_save_leaves_the_previous_set_whole(tmp_path):
    model, _ = _saved(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "model").rglob("*") if p.is_file()}

    class FullDisk:
        def save(self, directory):
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_model_dir(str(tmp_path), model, FullDisk())  # model.keras and config.json were already written
    assert {p: p.read_bytes() for p in (tmp_path / "model").rglob("*") if p.is_file()} == before
    assert os.listdir(tmp_path) == ["model"]


def test_a_foreign_model_subdirectory_is_refused_untouched(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not one of ours"):
        _saved(tmp_path)
    assert os.listdir(tmp_path / "model") == ["notes.txt"]


@pytest.mark.parametrize("keras_file", [False, True])
def test_a_downloaded_hf_model_in_the_model_subdirectory_is_refused_untouched(tmp_path, keras_file):
    # config.json is no sign of ours: an HF checkpoint has one too, and a Keras model a model.keras beside it.
    (tmp_path / "model").mkdir()
    foreign = {"config.json": '{"model_type": "gpt2", "n_embd": 768}', "model.safetensors": "weights",
               "README.md": "notes", **({"model.keras": "theirs"} if keras_file else {})}
    for name, content in foreign.items():
        (tmp_path / "model" / name).write_text(content)
    with pytest.raises(ValueError, match="not one of ours"):
        _saved(tmp_path)
    assert {p.name: p.read_text() for p in (tmp_path / "model").iterdir()} == foreign


def test_a_model_directory_saved_before_the_marker_is_still_replaced(tmp_path):
    _saved(tmp_path)
    (tmp_path / "model" / EXPORT_MARKER).unlink()  # what an earlier version wrote: model.keras, config.json, tokenizer/
    model, _ = _saved(tmp_path)
    assert read_config(str(tmp_path)) == model.config
    assert (tmp_path / "model" / EXPORT_MARKER).exists() and os.listdir(tmp_path) == ["model"]


def test_a_damaged_config_is_one_error_naming_the_file(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "model" / "config.json"
    path.write_text(path.read_text()[:20])  # cut short, as by a full disk
    with pytest.raises(ValueError, match=rf"^{path} is damaged: it is not valid JSON \(.*\); restore or remove it"):
        read_config(str(tmp_path))


def test_a_config_that_contradicts_the_model_file_is_refused(tmp_path):
    model, _ = _saved(tmp_path)
    other = LMConfig.from_dict({**model.config.to_dict(), "n_layer": 2})
    (tmp_path / "model" / "config.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(ValueError, match="config.json in .* contradicts its model.keras"):
        load_model_dir(str(tmp_path))


def test_check_saveable_refuses_what_a_save_would_refuse_before_any_training(tmp_path):
    from tf_lm.artifacts import check_saveable

    check_saveable(str(tmp_path / "new"))  # nothing there yet
    _saved(tmp_path / "run")
    check_saveable(str(tmp_path / "run"))
    (tmp_path / "run" / "model" / EXPORT_MARKER).unlink()  # a model/ saved before the marker
    check_saveable(str(tmp_path / "run"))
    (tmp_path / "foreign" / "model").mkdir(parents=True)
    (tmp_path / "foreign" / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not one of ours"):
        check_saveable(str(tmp_path / "foreign"))


@pytest.mark.parametrize("content", ["[]", "null", "5"])
def test_a_config_that_is_json_but_not_an_object_is_one_error_naming_it(tmp_path, content):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(content)
    with pytest.raises(ValueError, match=r"config.json is damaged: it holds (an array|null|a number), not an object"):
        read_config(str(tmp_path))
