"""`Checkpoints`: model variables (seed states included), optimizer and step round-trip; non-chiefs leave nothing."""

import gc
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_lm import LMConfig, TransformerLM
from tf_lm.training import Checkpoints, make_optimizer
from tf_lm.training.checkpoints import variable_keys

CONFIG = LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.1)


def build():
    model = TransformerLM(CONFIG)
    return model, make_optimizer(model, 1e-2)


def one_step(model, optimizer):
    grads = [keras.ops.ones_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    model(np.zeros((1, 4), "int32"), training=True)  # advances the dropout seed generators


def test_round_trip_restores_weights_slots_seeds_and_step(tmp_path):
    model, optimizer = build()
    one_step(model, optimizer)
    saved = Checkpoints(str(tmp_path), model, optimizer)
    assert saved.restore() == 0  # nothing there yet
    saved.save(7)

    keras.utils.set_random_seed(123)  # a different initialisation and different seed-generator states
    other, other_optimizer = build()
    restored = Checkpoints(str(tmp_path), other, other_optimizer)
    assert restored.restore() == 7
    for a, b in zip(model.variables, other.variables):  # variables include the seed-generator states
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(optimizer.variables, other_optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_restore_outside_a_run_leaves_the_trainers_extra_values_quietly(tmp_path, caplog):
    model, optimizer = build()
    saved = Checkpoints(str(tmp_path), model, optimizer)
    saved.checkpoint.log_window = tf.Variable([1.0, 2.0], dtype=tf.float64)  # as `Trainer.fit` tracks it
    saved.save(3)
    restored = Checkpoints(str(tmp_path), *build())
    assert restored.restore() == 3
    del restored
    gc.collect()  # TensorFlow warns of unread values when the checkpoint object is deleted
    assert "log_window" not in caplog.text


def test_a_checkpoint_of_factors_is_restored_only_onto_the_base_it_was_trained_on(tmp_path):
    model, optimizer = build()
    Checkpoints(str(tmp_path), model, optimizer, base_digest="base-a").save(2)
    with pytest.raises(ValueError, match=r"ckpt-2 was trained on another base model"):
        Checkpoints(str(tmp_path), *build(), base_digest="base-b").restore()
    assert Checkpoints(str(tmp_path), *build(), base_digest="base-a").restore() == 2
    Checkpoints(str(tmp_path / "older"), model, optimizer).save(1)  # written before digests: still restores
    assert Checkpoints(str(tmp_path / "older"), *build(), base_digest="base-b").restore() == 1


def test_keeps_the_latest_two(tmp_path):
    model, optimizer = build()
    checkpoints = Checkpoints(str(tmp_path), model, optimizer)
    for step in (2, 4, 6):
        checkpoints.save(step)
    assert checkpoints.latest.endswith("ckpt-6")
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".index")) == ["ckpt-4.index", "ckpt-6.index"]


def test_the_newest_checkpoint_is_the_highest_step_not_the_last_name(tmp_path):
    model, optimizer = build()
    checkpoints = Checkpoints(str(tmp_path), model, optimizer)
    for step in (9, 10):  # "ckpt-9" sorts after "ckpt-10" as a string
        checkpoints.save(step)
    restored = Checkpoints(str(tmp_path), *build())
    assert restored.restore() == 10 and restored.restored.endswith("ckpt-10")


def test_a_failed_save_removes_its_partial_files_in_a_directory_named_like_a_glob(tmp_path, monkeypatch):
    directory = tmp_path / "run[x]" / "checkpoints"
    checkpoints = Checkpoints(str(directory), *build())
    checkpoints.save(1)

    def full_disk(checkpoint_number):
        (directory / f"ckpt-{checkpoint_number}_temp").mkdir()
        (directory / f"ckpt-{checkpoint_number}_temp" / "part-00000").write_bytes(b"x")
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(checkpoints.manager, "save", full_disk)
    with pytest.raises(OSError, match="Could not write checkpoint 2 .* the last complete one .*ckpt-1"):
        checkpoints.save(2)
    assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    # Saving a step that is already complete (again after a resume) fails the same way: only the partial goes.
    with pytest.raises(OSError, match="Could not write checkpoint 1 .* the last complete one .*ckpt-1"):
        checkpoints.save(1)
    assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]


def test_a_non_chief_writes_nothing_that_stays(tmp_path):
    model, optimizer = build()
    path = Checkpoints(str(tmp_path / "shared"), model, optimizer, chief=False).save(2)
    assert not os.path.exists(tmp_path / "shared")
    assert not os.path.exists(os.path.dirname(path))


def test_variables_are_keyed_by_path_not_position(tmp_path):
    model, optimizer = build()
    one_step(model, optimizer)
    Checkpoints(str(tmp_path), model, optimizer).save(3)

    keras.utils.set_random_seed(5)
    other, other_optimizer = build()  # a second model in this process: Keras numbers its names differently
    assert "block_0/attention/qkv/kernel" in variable_keys(other)
    # A layer's seed generators are numbered from 0 (the keys of checkpoints on disk).
    assert "block_0/attention/seed_generator_0/seed_generator_state" in variable_keys(other)
    assert "block_0/attention/seed_generator_1/seed_generator_state" in variable_keys(other)
    # Reversed positions: a position-keyed restore would swap same-shaped tensors (the blocks' gamma/beta).
    reordered = Checkpoints(str(tmp_path), other, other_optimizer, variables=list(reversed(other.variables)))
    assert reordered.restore() == 3
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(optimizer.variables, other_optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_of_another_model_is_refused_naming_the_first_mismatch(tmp_path):
    model, optimizer = build()
    Checkpoints(str(tmp_path), model, optimizer).save(1)
    wider = TransformerLM(LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=r"'model_variables/embedding/token_embeddings/embeddings' with shape "
                                         r"\(11, 8\), but the model's is \(11, 16\)"):
        Checkpoints(str(tmp_path), wider, make_optimizer(wider, 1e-2)).restore()
    deeper = TransformerLM(LMConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1))
    with pytest.raises(ValueError, match="holds no variable 'model_variables/block_1/"):
        Checkpoints(str(tmp_path), deeper, make_optimizer(deeper, 1e-2)).restore()
    # The other way round: restore reads partially, so a deeper checkpoint would load into the shallower model.
    Checkpoints(str(tmp_path / "deeper"), deeper, make_optimizer(deeper, 1e-2)).save(1)
    with pytest.raises(ValueError, match="'model_variables/block_1/.*, which the model does not have"):
        Checkpoints(str(tmp_path / "deeper"), model, optimizer).restore()


def test_a_subset_of_variables_round_trips_and_the_rest_is_left_alone(tmp_path):
    model, optimizer = build()
    one_step(model, optimizer)
    Checkpoints(str(tmp_path), model, optimizer, variables=model.trainable_variables).save(2)

    keras.utils.set_random_seed(9)
    other, other_optimizer = build()
    seeds_before = [np.asarray(v) for v in other.non_trainable_variables]
    assert Checkpoints(str(tmp_path), other, other_optimizer, variables=other.trainable_variables).restore() == 2
    for a, b in zip(model.trainable_variables, other.trainable_variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for before, after in zip(seeds_before, other.non_trainable_variables):
        np.testing.assert_array_equal(before, np.asarray(after))


@pytest.mark.parametrize("damage", ["truncated data", "corrupt index"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    model, optimizer = build()
    checkpoints = Checkpoints(str(tmp_path), model, optimizer)
    checkpoints.save(2)
    expected = [np.asarray(v) for v in model.variables]
    one_step(model, optimizer)
    checkpoints.save(4)
    if damage == "truncated data":
        (data,) = tmp_path.glob("ckpt-4.data-*")
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        (tmp_path / "ckpt-4.index").write_bytes(b"garbage")

    keras.utils.set_random_seed(9)
    other, other_optimizer = build()
    restored = Checkpoints(str(tmp_path), other, other_optimizer)
    with caplog.at_level("WARNING"):
        assert restored.restore() == 2 and restored.restored.endswith("ckpt-2")
    for a, b in zip(expected, other.variables):
        np.testing.assert_array_equal(a, np.asarray(b))
    (warning,) = caplog.messages
    assert re.fullmatch(r"Checkpoint .*ckpt-4 is damaged \(.+\); restored .*ckpt-2 instead\.", warning), warning

    caplog.clear()
    (tmp_path / "ckpt-2.index").write_bytes(b"garbage")
    with caplog.at_level("WARNING"), pytest.raises(
            ValueError, match=r"No usable checkpoint in .*ckpt-4: .*; .*ckpt-2: .*move the directory aside"):
        Checkpoints(str(tmp_path), other, other_optimizer).restore()
    assert caplog.messages == []  # the error names them all: no warning that a previous one is tried


@pytest.mark.parametrize("state", ["", "garbage {"])
def test_a_damaged_directory_index_still_finds_the_latest_checkpoint(tmp_path, state):
    model, optimizer = build()
    checkpoints = Checkpoints(str(tmp_path), model, optimizer)
    checkpoints.save(2)
    one_step(model, optimizer)
    checkpoints.save(4)
    (tmp_path / "checkpoint").write_text(state)
    other, other_optimizer = build()
    assert Checkpoints(str(tmp_path), other, other_optimizer).restore() == 4
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def tf_keras_model_and_optimizers(units=3, legacy=False):
    """A tf_keras model (no Keras 3 paths) and two unbuilt tf_keras optimizers, as BERT's hf backend has (its
    `transformers.AdamWeightDecay` is a legacy one)."""
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(4), tf_keras.layers.Dense(units)])
    model.build((None, 2))
    adam = tf_keras.optimizers.legacy.Adam if legacy else tf_keras.optimizers.Adam
    return model, [adam(1e-2), adam(1e-1)]


def tf_keras_step(model, optimizers):
    for optimizer, layer in zip(optimizers, model.layers):  # a body and a head optimizer
        optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in layer.trainable_variables])


@pytest.mark.parametrize("legacy", [False, True])  # a legacy optimizer's slots are filed under the model variables
def test_position_keyed_tf_keras_model_and_lazily_built_optimizers_round_trip(tmp_path, legacy):
    model, optimizers = tf_keras_model_and_optimizers(legacy=legacy)
    tf_keras_step(model, optimizers)
    Checkpoints(str(tmp_path), model, optimizers, max_to_keep=1, keyed_by="position").save(5)

    other, other_optimizers = tf_keras_model_and_optimizers(legacy=legacy)  # other weights; no slots yet
    assert Checkpoints(str(tmp_path), other, other_optimizers, keyed_by="position").restore() == 5
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The slots (created by this update) come back too: the next update is the same on both.
    tf_keras_step(model, optimizers)
    tf_keras_step(other, other_optimizers)
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert sorted(p.name for p in tmp_path.glob("*.index")) == ["ckpt-5.index"]


@pytest.mark.parametrize("legacy", [False, True])
def test_a_position_keyed_checkpoint_of_another_model_is_refused(tmp_path, legacy):
    model, optimizers = tf_keras_model_and_optimizers(legacy=legacy)
    tf_keras_step(model, optimizers)  # with its slots
    Checkpoints(str(tmp_path), model, optimizers, keyed_by="position").save(1)
    other, other_optimizers = tf_keras_model_and_optimizers(units=5, legacy=legacy)
    with pytest.raises(ValueError, match=r"'model_variables/0002' with shape \(4, 3\), but the model's is \(4, 5\)"):
        Checkpoints(str(tmp_path), other, other_optimizers, keyed_by="position").restore()
    with pytest.raises(ValueError, match="keyed_by must be one of.*Received: keyed_by='name'"):
        Checkpoints(str(tmp_path), model, optimizers, keyed_by="name")


def test_only_the_chief_sets_a_damaged_index_aside_and_a_non_chief_still_finds_the_checkpoints(tmp_path):
    model, optimizer = build()
    Checkpoints(str(tmp_path), model, optimizer).save(2)
    (tmp_path / "checkpoint").write_text("")
    other, other_optimizer = build()
    worker = Checkpoints(str(tmp_path), other, other_optimizer, chief=False)
    # Only the chief writes into the shared directory.
    assert (tmp_path / "checkpoint").read_text() == "" and not (tmp_path / "checkpoint.damaged").exists()
    assert worker.restore() == 2

    class SetAsideMeanwhile(tf.train.CheckpointManager):
        """The index fails to parse, then another process sets it aside before this one can."""

        def __init__(self, checkpoint, directory, **kwargs):
            if (tmp_path / "checkpoint").exists():
                (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.damaged")
                raise ValueError("Invalid checkpoint state")
            super().__init__(checkpoint, directory, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.train, "CheckpointManager", SetAsideMeanwhile)
        assert Checkpoints(str(tmp_path), other, other_optimizer).restore() == 2


def test_an_unreadable_checkpoint_directory_is_an_error_not_a_fresh_start(tmp_path, monkeypatch):
    model, optimizer = build()
    Checkpoints(str(tmp_path), model, optimizer).save(2)

    def denied(path):
        raise tf.errors.PermissionDeniedError(None, None, f"{path}; Permission denied")

    # What an unreadable directory does (as root, permission bits do not apply): listing fails, a glob finds nothing.
    monkeypatch.setattr(tf.io.gfile, "listdir", denied)
    monkeypatch.setattr(tf.io.gfile, "glob", lambda pattern: [])
    other, other_optimizer = build()
    with pytest.raises(OSError, match=rf"Cannot list the checkpoint directory {tmp_path} \(.*Permission denied\)"):
        Checkpoints(str(tmp_path), other, other_optimizer).restore()
