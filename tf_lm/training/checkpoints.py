"""`Checkpoints`: the model's variables, the optimizer, the step (the input position) — saved atomically.

Keras 3 layers kept in Python lists are invisible to `tf.train.Checkpoint`'s object graph, so the model's
variables (dropout seed-generator states included: they make dropout resume exactly) are tracked by their
position in `model.variables`, which the config fixes; their paths would not do, since Keras numbers layer
and seed-generator names per process (`transformer_lm_2/.../seed_generator_5`).
TensorFlow writes a checkpoint's files before it updates the `checkpoint` index, so a run killed mid-save
resumes from the previous complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf


class Checkpoints:
    """Saves and restores `(model variables, optimizer, step)` under `directory`.

    Under `MultiWorkerMirroredStrategy` every worker must call `save` (saving is collective); only the chief
    writes into `directory`, the others into a temporary directory that is deleted right after.

    Args:
        directory: str. Where checkpoints live (`<model_dir>/checkpoints`).
        model: the `keras.Model` being trained.
        optimizer: its optimizer (built, so its slots exist before a restore).
        chief: bool, default True. Whether this process owns `directory`.
        max_to_keep: int, default 2.

    Example:
    >>> checkpoints = Checkpoints("runs/x/checkpoints", model, optimizer)  # doctest: +SKIP
    >>> start_step = checkpoints.restore()  # 0 when there is none  # doctest: +SKIP
    """

    def __init__(self, directory: str, model: keras.Model, optimizer, chief: bool = True, max_to_keep: int = 2):
        self.directory = directory
        self.chief = chief
        # A plain (non-distributed) variable: the step is host-side bookkeeping, the same on every replica.
        with tf.init_scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        variables = {f"{i:04d}": v for i, v in enumerate(model.variables)}
        self.checkpoint = tf.train.Checkpoint(model_variables=variables, optimizer=optimizer, step=self.step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore(self) -> int:
        """Restores the latest checkpoint in `directory`, if any; returns its step (0 when there is none)."""
        if self.latest is None:
            return 0
        self.checkpoint.restore(self.latest).assert_existing_objects_matched()
        return int(self.step.numpy())

    def save(self, step: int) -> str:
        """Writes the state after `step` updates; returns the checkpoint's path (a temporary one on non-chiefs)."""
        self.step.assign(step)
        if self.chief:
            return self.manager.save(checkpoint_number=step)
        scratch = tempfile.mkdtemp(prefix="tf_lm-worker-checkpoint-")
        try:
            return self.checkpoint.write(os.path.join(scratch, "ckpt"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
