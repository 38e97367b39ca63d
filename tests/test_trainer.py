"""`Trainer`: the custom step learns, matches across replica counts, resumes exactly and stops on NaN."""

import dataclasses
import os
import re
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_lm.configs import LMConfig
from tf_lm.distribute import resolve_strategy
from tf_lm.training import TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, weights_digest

MODEL = LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def synthetic(seed=0, batch=4, block=8, vocab=11):
    """The data contract in miniature: batch s is a pure function of (seed, s), and start_step skips to s.

    Like `lm_datasets`, each input pipeline reads its own stream of rows and yields per-replica batches; a
    pipeline that feeds several replicas (MirroredStrategy) yields several batches per global step.
    """

    def train(start_step, context):
        pipelines = 1 if context is None else context.num_input_pipelines
        pipeline = 0 if context is None else context.input_pipeline_id
        per_replica = batch if context is None else context.get_per_replica_batch_size(batch)

        def row(r):
            return tf.random.stateless_uniform((block + 1,), (seed, r * pipelines + pipeline), 0, vocab, tf.int32)

        rows = tf.data.Dataset.counter(start_step * (batch // pipelines)).map(row)
        return rows.batch(per_replica, drop_remainder=True).map(lambda ids: (ids[:, :-1], ids[:, 1:]))

    def validation(context):  # three global batches
        per_global_batch = 1 if context is None else context.num_replicas_in_sync // context.num_input_pipelines
        return train(10_000, context).take(3 * per_global_batch)

    return train, validation


def config(**overrides):
    values = dict(batch_size=4, steps=4, warmup_steps=1, eval_every=2, eval_steps=2, checkpoint_every=2, log_every=1)
    return TrainConfig(**{**values, **overrides})


def uncompiled_trainer(model_config, cfg, model_dir, **kwargs):
    """A `Trainer` of a plain `tf.function` step, for tests of what the loop records rather than of the compiled
    program: XLA's compilation would be most of such a test's time."""
    return Trainer.from_config(model_config, cfg, resolve_strategy(), model_dir, jit_compile=False,
                               **{"verbose": False, **kwargs})


def test_loss_falls_on_a_learnable_stream(tmp_path):
    def repeating(start_step, context):
        del start_step, context
        ids = tf.constant([[i % 4 for i in range(9)]] * 4)  # (4, 9): a period-4 sequence
        return tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:])).repeat()

    cfg = config(steps=40, learning_rate=1e-2, eval_every=40, checkpoint_every=40)
    trainer = Trainer.from_config(MODEL, cfg, resolve_strategy(), str(tmp_path), verbose=False)
    result = trainer.fit(repeating, lambda context: repeating(0, context).take(1))
    assert result["validation"]["loss"] < 0.5 * np.log(11)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 40 + 1 + 1  # header, 40 train rows, 1 validation
    assert (tmp_path / "loss.png").stat().st_size > 0


def _rows(model_dir):
    import csv

    with open(model_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_metrics_rows_log_the_rate_each_update_used_and_no_rate_before_one_is_timed(tmp_path):
    from tf_lm.training.schedule import WarmupCosine

    train, validation = synthetic()
    cfg = config(steps=6, warmup_steps=3, learning_rate=1.0, min_learning_rate=0.0, eval_every=100)
    uncompiled_trainer(MODEL, cfg, str(tmp_path)).fit(train, validation)
    rows = [row for row in _rows(tmp_path) if row["split"] == "train"]
    schedule = WarmupCosine(1.0, 0.0, 3, 6)
    # Update k (the k-th step) runs with the schedule at k - 1: 0.25, 0.5, 0.75, 1.0, then the cosine.
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx(
        [float(schedule(k - 1)) for k in range(1, 7)])
    assert rows[0]["tokens_per_second"] == "" and float(rows[1]["tokens_per_second"]) > 0  # step 1 compiles


def test_a_restart_from_step_0_does_not_log_step_0_twice(tmp_path):
    train, validation = synthetic()
    cfg = config(steps=2, checkpoint_every=100)
    for _ in range(2):  # the second run finds no checkpoint (every 100 steps): it starts at 0 again
        trainer = uncompiled_trainer(MODEL, cfg, str(tmp_path))
        trainer.evaluate_at_start = True  # as for a fine-tuning run
        trainer.fit(train, validation)
        for path in (tmp_path / "checkpoints").iterdir():
            path.unlink()
    assert [(row["step"], row["split"]) for row in _rows(tmp_path)].count(("0", "validation")) == 1


def test_mfu_divides_by_every_replicas_peak(tmp_path):
    from types import SimpleNamespace

    trainer = Trainer.from_config(MODEL, config(), resolve_strategy(), str(tmp_path), verbose=False, peak_flops=1e9)
    one = trainer._mfu(1000.0)
    assert one == pytest.approx(MODEL.flops_per_token(MODEL.block_size) * 1000.0 / 1e9)
    trainer.strategy = SimpleNamespace(num_replicas_in_sync=2)  # the same tokens/s from two devices
    assert trainer._mfu(1000.0) == pytest.approx(one / 2)


def test_steps_that_beat_the_measured_peak_leave_mfu_out_and_say_why_once(tmp_path, capsys):
    """A peak measured on a busy machine can come out below what the steps reach: an MFU above 1 is not printed
    or logged as if real; the run goes on without MFU and says so once, on a line of its own."""
    train, validation = synthetic()
    cfg = config(steps=4, eval_every=100, checkpoint_every=100)
    trainer = uncompiled_trainer(MODEL, cfg, str(tmp_path), verbose=True, peak_flops=1.0)
    result = trainer.fit(train, validation)
    assert result["mfu"] is None and result["tokens_per_second"] > 0
    assert [row["mfu"] for row in _rows(tmp_path)] == [""] * 5  # 4 train rows (step 1 untimed), 1 validation
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "MFU" in line]
    assert len(notes) == 1 and notes[0].startswith("note: MFU is left out from here on: the steps reach "), out
    assert "x the fp32 matmul peak measured at start-up (0.0 GFLOP/s per device), so that measurement came " in notes[0]
    trainer.peak_flops = 1e30  # a peak the steps stay under: MFU as it is
    assert 0 < trainer._checked_mfu(1000.0, None) == trainer._mfu(1000.0) < 1


def test_the_matmul_peak_is_the_fastest_matmul_timed_past_a_burst_of_load(monkeypatch):
    from types import SimpleNamespace

    from tf_lm.training import metrics

    def clock(durations):
        """A stand-in for `time` whose perf_counter reads a start and an end per timed matmul."""
        now, readings = 0.0, []
        for duration in durations:
            readings += [now, now + duration]
            now += duration
        readings = iter(readings)
        return SimpleNamespace(perf_counter=readings.__next__, unread=readings)

    # The first three matmuls are slowed by another process; the fourth runs undisturbed.
    monkeypatch.setattr(metrics, "time", clock([0.1, 0.1, 0.1, 0.01] + [0.1] * 30))
    assert metrics.measure_matmul_peak(8) == pytest.approx(2 * 8**3 / 0.01)
    quick = clock([1e-6] * 30)
    monkeypatch.setattr(metrics, "time", quick)
    metrics.measure_matmul_peak(8)  # quick matmuls: timed 20 times, not until half a second has passed
    assert len(list(quick.unread)) == 2 * (30 - 20)


_DEFINITION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]")
_DOT = re.compile(r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), .*lhs_contracting_dims=\{([\d,]*)\}")


def dot_flops(hlo):
    """2·M·N·K summed over every `dot` of an HLO module: its matmul FLOPs."""
    shapes = {}  # instruction names are unique in a module: an operand's shape is where it is defined
    for line in hlo.splitlines():
        match = _DEFINITION.match(line)
        if match:
            shapes[match[1]] = [int(n) for n in match[2].split(",") if n]
    total = 0
    for line in hlo.splitlines():
        match = _DOT.search(line)
        if match:
            output = [int(n) for n in match[1].split(",") if n]
            contracted = [shapes[match[2]][int(i)] for i in match[3].split(",") if i]
            total += 2 * int(np.prod(output)) * int(np.prod(contracted))
    return total


@pytest.mark.parametrize("lora", [{}, {"lora_rank": 8}, {"lora_rank": 4, "lora_embeddings": True,
                                                          "lora_train_norms": True}],
                         ids=["full", "lora", "lora_embeddings_norms"])
def test_mfu_counts_the_matmul_flops_of_the_compiled_step(tmp_path, lora):
    """The tied head's matmul included (6·d·V: most of the count at this vocabulary), and LoRA's frozen weights
    without a weight gradient: within 2% of the dots XLA keeps after pruning. The rest is the biases and
    LayerNorms, which MFU counts as weights, and the token table's factors, merged once per step."""
    model = LMConfig(vocab_size=512, block_size=16, n_layer=1, n_head=2, n_embd=64)
    if lora:
        lora = {**lora, "init_from": "seeded random weights"}  # LoRA asks for a base; the seeded one stands in
    trainer = Trainer.from_config(model, TrainConfig(batch_size=32, steps=10, warmup_steps=1, **lora),
                                  resolve_strategy("cpu"), str(tmp_path), verbose=False, peak_flops=1.0)
    ids = tf.zeros((32, model.block_size), tf.int32)
    hlo = trainer.train_step.compiled.experimental_get_compiler_ir(ids, ids)(stage="optimized_hlo")
    per_token = dot_flops(hlo) / ids.shape.num_elements()
    assert trainer._mfu(1.0) == pytest.approx(per_token, rel=0.02)  # one token/s at a peak of 1 FLOP/s


def test_trains_a_model_and_optimizer_built_by_the_caller(tmp_path):
    """What `from_config` builds is a default, not a requirement: the trainer takes any `TransformerLM` and Keras 3
    optimizer made in the strategy's scope, and checkpoints what it is given."""
    import keras

    from tf_lm.model import TransformerLM

    strategy = resolve_strategy()
    with strategy.scope():
        model = TransformerLM(MODEL)
        optimizer = keras.optimizers.SGD(learning_rate=0.5)

    def repeating(start_step, context):
        del start_step, context
        ids = tf.constant([[i % 4 for i in range(9)]] * 4)  # (4, 9): a period-4 sequence
        return tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:])).repeat()

    def validation(context):
        return repeating(0, context).take(1)

    cfg = config(steps=10, eval_every=10, checkpoint_every=10)
    trainer = Trainer(model, optimizer, cfg, strategy, str(tmp_path), verbose=False)
    before = trainer.evaluate(validation)
    result = trainer.fit(repeating, validation)
    assert result["validation"]["loss"] < 0.8 * before["loss"]
    assert int(optimizer.iterations.numpy()) == 10
    saved = dict(tf.train.list_variables(str(tmp_path / "checkpoints" / "ckpt-10")))
    assert not [name for name in saved if "adam" in name.lower() or "momentum" in name.lower()]  # plain SGD's
    assert len([name for name in saved if name.startswith("model_variables/")]) == len(model.variables)


@pytest.mark.slow  # the default suite's SIGKILL test (test_train_lm.py) resumes a run with dropout bit for bit too
def test_resume_continues_exactly_with_dropout(tmp_path):
    train, validation = synthetic()
    cfg, model = config(steps=4), dataclasses.replace(MODEL, dropout=0.2)
    straight = Trainer.from_config(model, cfg, resolve_strategy(), str(tmp_path / "a"), verbose=False)
    expected = straight.fit(train, validation)

    first = Trainer.from_config(model, config(steps=2), resolve_strategy(), str(tmp_path / "b"), verbose=False)
    first.fit(train, validation)
    tf.random.uniform(())  # disturb the global random state: everything must come from the checkpoint
    second = Trainer.from_config(model, cfg, resolve_strategy(), str(tmp_path / "b"), verbose=False)
    resumed = second.fit(train, validation)
    assert resumed["start_step"] == 2
    for a, b in zip(straight.model.weights, second.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed["validation"]["loss"] == pytest.approx(expected["validation"]["loss"], abs=1e-6)


def test_a_resume_off_the_log_grid_logs_the_rows_of_a_run_that_never_stopped(tmp_path):
    import shutil

    train, validation = synthetic()
    cfg = config(steps=4, log_every=2, checkpoint_every=3, eval_every=100)
    straight = uncompiled_trainer(MODEL, cfg, str(tmp_path / "straight"))
    straight.fit(train, validation)
    # Stopped after step 3, as a SIGTERM stops a run between two rows: the row at step 4 averages steps 3 and 4.
    shutil.copytree(tmp_path / "straight", tmp_path / "stopped")
    for path in (tmp_path / "stopped" / "checkpoints").glob("ckpt-4*"):
        path.unlink()
    (tmp_path / "stopped" / "checkpoints" / "checkpoint").unlink()
    resumed = uncompiled_trainer(MODEL, cfg, str(tmp_path / "stopped"))
    assert resumed.fit(train, validation)["start_step"] == 3

    def losses(model_dir):
        return [(row["step"], row["split"], row["loss"]) for row in _rows(model_dir)]

    assert losses(tmp_path / "stopped") == losses(tmp_path / "straight")  # the very same numbers

    # A checkpoint written before the window was saved still resumes; its first row averages the steps since.
    older = uncompiled_trainer(MODEL, cfg, str(tmp_path / "older"))
    older.checkpoints.save(3)  # as fit saves, but without the window: fit tracks it only after restoring
    assert "log_window" not in str(tf.train.list_variables(older.checkpoints.latest))
    again = uncompiled_trainer(MODEL, cfg, str(tmp_path / "older"))
    assert again.fit(train, validation)["start_step"] == 3
    assert [row["step"] for row in _rows(tmp_path / "older") if row["split"] == "train"] == ["4"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train, validation = synthetic()

    def poisoned(start_step, context):
        # Steps 1 and 2 are clean; from step 3 on the targets are out of range, which XLA turns into a NaN loss.
        batches = train(start_step, context).enumerate(start_step)
        return batches.map(lambda i, xy: (xy[0], tf.where(i >= 2, xy[1] * 0 + 99, xy[1])))

    trainer = Trainer.from_config(MODEL, config(steps=4), resolve_strategy(), str(tmp_path), verbose=False)
    with pytest.raises(TrainingDiverged, match="NaN/inf at step 3.*ckpt-2"):
        trainer.fit(poisoned, validation)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.index")) == ["ckpt-2.index"]

    # An infinite loss stops the run just like NaN: the same trainer resumes from ckpt-2, and its step 3 reports inf.
    step = trainer.train_step

    def infinite_at_step_3(iterator, stop=False):
        loss, norm, stop = step(iterator, stop)
        return (tf.constant(np.inf) if int(trainer.optimizer.iterations.numpy()) >= 3 else loss), norm, stop

    trainer.train_step = infinite_at_step_3
    with pytest.raises(TrainingDiverged, match="NaN/inf at step 3.*ckpt-2"):
        trainer.fit(train, validation)


def test_batch_not_divisible_by_replicas_is_rejected(tmp_path, mirrored):
    with pytest.raises(ValueError, match="batch_size=3 is not divisible by the 2 replicas"):
        Trainer.from_config(LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8),
                            TrainConfig(batch_size=3), mirrored, str(tmp_path))


# LoRA's layers back-propagate through a gradient of their own (`tf_lm.layers.dense`): it must hold per replica
# and in float16 too. LoRA asks for a base; the seeded random initialisation stands in for it.
LORA = {"lora_rank": 2, "lora_embeddings": True, "init_from": "seeded random weights"}


@pytest.mark.parametrize("lora", [{}, pytest.param(LORA, marks=pytest.mark.slow)], ids=["full", "lora"])  # lora: 12 s
def test_mirrored_over_two_cpus_matches_one_device(tmp_path, mirrored, lora):
    weights, validation_losses, train_losses = {}, {}, {}
    for name, strategy in (("cpu", resolve_strategy("cpu")), ("mirrored", mirrored)):
        train, validation = synthetic()
        keras.utils.set_random_seed(0)
        trainer = Trainer.from_config(MODEL, config(steps=1, warmup_steps=0, grad_clip=0.05, **lora),
                                      strategy, str(tmp_path / name), verbose=False)
        result = trainer.fit(train, validation)
        assert trainer.strategy.num_replicas_in_sync == (1 if name == "cpu" else 2)
        weights[name] = [np.asarray(w) for w in trainer.model.weights]
        validation_losses[name] = result["validation"]["loss"]
        train_losses[name] = result["train_loss"]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(weights["cpu"], weights["mirrored"])) < 1e-5
    # config() evaluates 2 of the 3 global batches: the same windows however many replicas share them.
    assert validation_losses["mirrored"] == pytest.approx(validation_losses["cpu"], abs=1e-5)
    # The logged train loss is the global batch's mean too (grad_clip hides a per-replica scale in the weights).
    assert train_losses["mirrored"] == pytest.approx(train_losses["cpu"], abs=1e-5)


def test_weights_digest_tells_weights_apart(tmp_path):
    trainer = Trainer.from_config(MODEL, config(), resolve_strategy(), str(tmp_path), verbose=False)
    before = weights_digest(trainer.model)
    trainer.model.weights[0].assign(trainer.model.weights[0] + 1e-7)
    assert weights_digest(trainer.model) != before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_current_step_and_stops(tmp_path, capsys, signum):
    train, validation = synthetic()

    def poke(index):
        if int(index) == 2:  # when the batch of step 3 is fetched (tf.data may fetch it during step 2)
            os.kill(os.getpid(), signum)
        return index

    def signalling(start_step, context):
        def fetch(index, batch):
            with tf.control_dependencies([tf.py_function(poke, [index], tf.int64)]):
                return tf.identity(batch[0]), batch[1]

        return train(start_step, context).enumerate(start_step).map(fetch)

    handler = signal.getsignal(signum)
    trainer = uncompiled_trainer(MODEL, config(steps=8, checkpoint_every=100, eval_every=100), str(tmp_path),
                                 verbose=True)
    with pytest.raises(TrainingInterrupted, match=rf"by {signal.Signals(signum).name} at step [23];") as stopped:
        trainer.fit(signalling, validation)
    # The progress bar's line is ended (on stdout, which it shares with no newline), so the `stopped: ...` line a
    # script prints next, on stderr, starts a line of its own.
    out = capsys.readouterr().out
    assert "━" in out and out.endswith("\n")
    assert stopped.value.exit_code == 128 + signum  # 143 for SIGTERM, 130 for Ctrl-C, as a shell reports them
    step = stopped.value.args[0].split("at step ")[1].split(";")[0]
    assert [p.name for p in (tmp_path / "checkpoints").glob("*.index")] == [f"ckpt-{step}.index"]
    assert signal.getsignal(signum) is handler  # the trainer's handler is removed again


@pytest.mark.slow  # 7 s; tests/test_checkpoints.py checks the digest itself
def test_a_lora_run_resumes_only_onto_the_base_it_started_from(tmp_path):
    import keras

    from tf_lm.convert import gpt2_state
    from tf_lm.model import TransformerLM

    train, validation = synthetic()
    cfg = config(steps=2, checkpoint_every=1, eval_every=100, **LORA)
    Trainer.from_config(MODEL, cfg, resolve_strategy(), str(tmp_path), verbose=False).fit(train, validation)
    keras.utils.set_random_seed(5)
    other_base = gpt2_state(TransformerLM(MODEL))  # LoRA checkpoints hold only the factors: nothing else differs
    resumed = Trainer.from_config(MODEL, dataclasses.replace(cfg, steps=3), resolve_strategy(), str(tmp_path),
                                  initial_state=other_base, verbose=False)
    with pytest.raises(ValueError, match="was trained on another base model"):
        resumed.fit(train, validation)
    same = Trainer.from_config(MODEL, dataclasses.replace(cfg, steps=3), resolve_strategy(), str(tmp_path),
                               verbose=False)
    assert same.fit(train, validation)["start_step"] == 2


@pytest.mark.parametrize("lora", [{}, LORA], ids=["full", "lora"])
def test_mixed_float16_trains_with_loss_scaling_and_leaves_the_global_policy(tmp_path, lora):
    import keras

    train, validation = synthetic()
    trainer = Trainer.from_config(MODEL, config(steps=2, warmup_steps=0, precision="mixed_float16", **lora),
                                  resolve_strategy(), str(tmp_path), verbose=False)
    result = trainer.fit(train, validation)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert {layer.dtype_policy.name for layer in trainer.model._flatten_layers() if layer is not trainer.model.head} \
        == {"mixed_float16"}
    assert {v.dtype for v in trainer.model.weights} == {"float32"}
    assert np.isfinite(result["validation"]["loss"])


def test_an_update_compiled_on_its_own_equals_the_plain_one():
    """`make_train_step(jit_update=True)`: Keras 3 optimizers update under XLA, tf_keras ones as they are."""
    import keras
    import tf_keras

    from tf_lm.training.trainer import make_train_step

    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32"))
    finals = []
    for jit_update in (False, True):
        keras.utils.set_random_seed(0)
        body, head = keras.layers.Dense(5), keras.layers.Dense(2)
        legacy = tf_keras.layers.Dense(2, kernel_initializer="ones")  # a tf_keras layer with a tf_keras optimizer
        model = keras.Sequential([keras.Input((3,)), body, head])
        legacy.build((None, 3))

        def loss(x, y, model=model, legacy=legacy):
            return tf.reduce_mean((model(x) - y) ** 2) + tf.reduce_mean((legacy(x) - y) ** 2)

        updates = [(keras.optimizers.AdamW(1e-2), body.trainable_variables),
                   (keras.optimizers.AdamW(1e-1), head.trainable_variables),
                   (tf_keras.optimizers.Adam(1e-2), legacy.trainable_variables)]
        step = make_train_step(loss, updates, tf.distribute.get_strategy(), jit_compile=False, jit_update=jit_update)
        batches = iter([batch] * 3)
        for _ in range(3):
            step(batches)
        finals.append([np.asarray(v) for v in model.variables + legacy.variables])
    for plain, compiled in zip(*finals):
        np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-7)


def test_gradients_are_clipped_by_their_global_norm():
    import keras

    from tf_lm.training.trainer import make_train_step

    a, c = tf.Variable(0.0), tf.Variable(0.0)
    step = make_train_step(lambda x: 3 * a + 4 * c + x, [(keras.optimizers.SGD(1.0), [a, c])],
                           tf.distribute.get_strategy(), grad_clip=1.0, jit_compile=False)
    _, norm, _ = step(iter([(tf.constant(0.0),)]))
    assert float(norm) == pytest.approx(5.0)  # the unclipped global norm of the gradients (3, 4)
    # Scaled together to norm 1: (0.6, 0.8), not each clipped to 1 on its own.
    assert (float(a), float(c)) == pytest.approx((-0.6, -0.8))


def test_the_compiled_step_can_be_inspected_without_running(tmp_path):
    trainer = Trainer.from_config(MODEL, config(), resolve_strategy(), str(tmp_path), verbose=False)
    ids = tf.zeros((4, MODEL.block_size), tf.int32)
    hlo = trainer.train_step.compiled.experimental_get_compiler_ir(ids, ids)(stage="hlo")
    assert "HloModule" in hlo
    assert int(trainer.optimizer.iterations.numpy()) == 0


@pytest.mark.slow  # four compiles
def test_a_trainer_built_in_the_mirrored_scope_distributes_and_a_constant_rate_is_logged(tmp_path, mirrored):
    import csv

    from tf_lm.model import TransformerLM
    from tf_lm.training import make_optimizer

    strategy, results = mirrored, {}
    for where in ("outside", "inside"):
        keras.utils.set_random_seed(0)
        model_dir = str(tmp_path / where)
        with strategy.scope():
            model = TransformerLM(MODEL)
            optimizer = make_optimizer(model, 1e-2)  # a constant rate: a mirrored variable under the strategy
            if where == "inside":
                trainer = Trainer(model, optimizer, config(steps=2), strategy, model_dir, verbose=False)
        if where == "outside":
            trainer = Trainer(model, optimizer, config(steps=2), strategy, model_dir, verbose=False)
        trainer.fit(*synthetic())
        with open(model_dir + "/metrics.csv") as f:
            rates = [float(row["learning_rate"]) for row in csv.DictReader(f) if row["split"] == "train"]
        results[where] = {"fused": trainer.fused, "digest": weights_digest(model), "rates": rates}
    assert results["inside"] == results["outside"]
    assert results["inside"]["fused"] is False and results["inside"]["rates"] == pytest.approx([1e-2, 1e-2])


def test_a_trailing_slash_on_model_dir_names_the_same_checkpoints():
    train, validation = synthetic()
    uncompiled_trainer(MODEL, config(steps=2), "ram://trainer_slash/").fit(train, validation)
    rerun = uncompiled_trainer(MODEL, config(steps=2), "ram://trainer_slash")
    assert rerun.checkpoints.directory == "ram://trainer_slash/checkpoints"
    assert rerun.checkpoints.restore() == 2
