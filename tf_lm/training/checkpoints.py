"""`Checkpoints`: the model's variables, the optimizer's, the step (the input position) — keyed by path.

Keras 3 layers kept in Python lists are invisible to `tf.train.Checkpoint`'s object graph, and a position in
`model.variables` would silently swap same-shaped tensors if a Keras release reordered them, so every variable is
saved under a key made from its path (`block_0/attention/qkv/kernel`), and a restore refuses a checkpoint whose
keys or shapes differ, naming the first mismatch. Two parts of a path are per process and are rewritten first:
the model's own name (`transformer_lm_2/...`) is dropped, and a seed generator's global number
(`seed_generator_5`) becomes its ordinal under its layer. The optimizer's slots are keyed the same way.
TensorFlow writes a checkpoint's files before it updates the `checkpoint` index, so a run killed mid-save
resumes from the previous complete one; a damaged latest checkpoint falls back to the one before it.

Objects whose variables have no Keras 3 path (a tf_keras model and optimizer: BERT's hf backend) are checkpointed
with `keyed_by="position"`: model variables by their position in `model.variables` (a resume rebuilds the same
model from the same checkpoint), optimizers tracked as objects, since tf_keras creates their slots on the first
update and restores them then.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import tempfile
import uuid

import keras
import tensorflow as tf
from absl import logging

_SEED_GENERATOR = re.compile(r"seed_generator(_\d+)?$")
_MODEL_SCOPE = "model_variables"
_OPTIMIZER_SCOPE = "optimizer_variables"
KEYINGS = ("path", "position")
# How `tf.train.Checkpoint` names a variable tracked in a dict: its key with "/" escaped, then this suffix.
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# ... and where it files a slot of a legacy tf_keras optimizer: under the model variable the slot belongs to.
_SLOT_MARKER = "/.OPTIMIZER_SLOT/"
_BASE_DIGEST = "base_digest"


def variable_keys(model: keras.Model, variables=None) -> dict[str, tf.Variable]:
    """Maps each variable of `model` (or the given subset of them) to a key that is the same in every process.

    Args:
        model: the `keras.Model` the variables belong to.
        variables: optional iterable of some of `model.variables` (e.g. only the trainable ones); default all.

    Returns:
        dict `{key: variable}` in `model.variables` order, e.g. `"block_0/attention/qkv/kernel"`.
    """
    keys, seed_counts = {}, {}
    for variable in model.variables:
        parts = variable.path.split("/")
        if parts[0] == model.name:
            parts = parts[1:]
        parent = "/".join(parts[:-2])
        if len(parts) >= 2 and _SEED_GENERATOR.match(parts[-2]):
            ordinal = seed_counts[parent] = seed_counts.get(parent, -1) + 1
            parts[-2] = f"seed_generator_{ordinal}"
        keys[id(variable)] = "/".join(parts)
    chosen = model.variables if variables is None else variables
    return {keys[id(variable)]: variable for variable in chosen}


def optimizer_keys(optimizer, model_keys: dict[str, tf.Variable]) -> dict[str, tf.Variable]:
    """Keys the optimizer's variables by the model key of the variable each slot belongs to.

    Keras names a slot `<optimizer>/<variable path with "/" as "_">_<slot>` (`adam_w_3/..._qkv_kernel_momentum`);
    its key is `<optimizer>/<model key>/<slot>`, with the optimizer's per-process number dropped. Variables of no
    model variable (the iteration count, the loss scale) keep their name under the optimizer's.
    """
    # Longest first, so `..._mlp_in_kernel` is not taken for a prefix of a longer path.
    prefixes = sorted(((v.path.replace("/", "_") + "_", key) for key, v in model_keys.items()),
                      key=lambda item: -len(item[0]))
    keys = {}
    for variable in optimizer.variables:
        owner, name = variable.path.split("/", 1)
        owner = re.sub(r"_\d+$", "", owner)
        for prefix, model_key in prefixes:
            if name.startswith(prefix):
                name = f"{model_key}/{name[len(prefix):]}"
                break
        if f"{owner}/{name}" in keys:  # two slots on one key would restore into each other
            raise ValueError(f"Two optimizer variables share the checkpoint key {owner}/{name}.")
        keys[f"{owner}/{name}"] = variable
    return keys


def _checkpoint_number(path: str) -> int:
    suffix = path.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _unescape(name: str) -> str:
    return name.replace(".S", "/").replace("..", ".")


def _reader(path: str):
    # Not tf.train.load_checkpoint: it takes a path that is also a directory prefix for a directory, which on
    # ram:// (where every prefix is one) makes it look for a `checkpoint` file inside `ckpt-4/`.
    return tf.compat.v1.train.NewCheckpointReader(path)


class Checkpoints:
    """Saves and restores `(model variables, optimizer, step)` under `directory`, each variable keyed by path (or,
    for tf_keras objects, by position).

    Under `MultiWorkerMirroredStrategy` every worker must call `save` (saving is collective); only the chief
    writes into `directory`, the others into a temporary directory that is deleted right after.

    Args:
        directory: str. Where checkpoints live (`<model_dir>/checkpoints`).
        model: the `keras.Model` being trained.
        optimizer: its optimizer (built, so its slots exist before a restore); with `keyed_by="position"` it may
            also be a list of optimizers, and tf_keras ones may be unbuilt.
        chief: bool, default True. Whether this process owns `directory`.
        max_to_keep: int, default 2.
        variables: optional iterable, the subset of `model.variables` to save and restore (default all of them),
            e.g. only the trainable ones when the rest come from a pretrained model.
        keyed_by: str, default "path". `"path"` keys every model and optimizer variable by its Keras 3 path;
            `"position"` keys model variables by their index in `model.variables` and tracks `optimizer` (then
            also a list of optimizers) as objects, for models and optimizers without Keras 3 paths (tf_keras).
            Either way a restore refuses model variables of other keys or shapes.
        base_digest: optional str, a digest of the frozen weights the saved variables were trained on (LoRA's
            base), saved with every checkpoint; a restore refuses a checkpoint saved with another one.

    Example:
    >>> checkpoints = Checkpoints("runs/x/checkpoints", model, optimizer)  # doctest: +SKIP
    >>> start_step = checkpoints.restore()  # 0 when there is none  # doctest: +SKIP
    """

    def __init__(self, directory: str, model: keras.Model, optimizer, chief: bool = True, max_to_keep: int = 2,
                 variables=None, keyed_by: str = "path", base_digest: str | None = None):
        if keyed_by not in KEYINGS:
            raise ValueError(f"keyed_by must be one of {list(KEYINGS)}. Received: keyed_by={keyed_by!r}")
        self.directory = directory
        self.chief = chief
        # A plain (non-distributed) variable: the step is host-side bookkeeping, the same on every replica.
        with tf.init_scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        if keyed_by == "path":
            model_variables = variable_keys(model, variables)
            optimizer_variables = optimizer_keys(optimizer, variable_keys(model))
            optimizer_shapes = {f"{_OPTIMIZER_SCOPE}/{key}": tuple(v.shape) for key, v in optimizer_variables.items()}
            self._checked_scopes = (_MODEL_SCOPE, _OPTIMIZER_SCOPE)
        else:
            position = {id(v): i for i, v in enumerate(model.variables)}
            chosen = model.variables if variables is None else variables
            model_variables = {f"{position[id(v)]:04d}": v for v in chosen}
            optimizer_variables, optimizer_shapes = optimizer, {}
            self._checked_scopes = (_MODEL_SCOPE,)  # the optimizers' slots may not exist yet
        self.shapes = {f"{_MODEL_SCOPE}/{key}": tuple(v.shape) for key, v in model_variables.items()}
        self.shapes.update(optimizer_shapes)
        self.checkpoint = tf.train.Checkpoint(
            step=self.step, **{_MODEL_SCOPE: model_variables, _OPTIMIZER_SCOPE: optimizer_variables}
        )
        try:
            self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
        except ValueError:  # an empty `checkpoint` index file: set it aside, the checkpoints themselves still count
            state = os.path.join(directory, "checkpoint")
            index_dir = directory
            if chief:
                with contextlib.suppress(tf.errors.NotFoundError):  # someone set it aside already
                    tf.io.gfile.rename(state, f"{state}.damaged", overwrite=True)
                    logging.warning("The checkpoint index %s is damaged; moved it to %s.damaged.", state, state)
            else:
                # Only the chief writes `directory`, and it may not have set the index aside yet. A non-chief
                # never saves through its manager, and `restore` lists the checkpoint files themselves, so an
                # index-less manager (on a directory that does not exist) is all it needs.
                index_dir = os.path.join(tempfile.gettempdir(), f"tf_lm-no-checkpoint-index-{uuid.uuid4().hex}")
            self.manager = tf.train.CheckpointManager(self.checkpoint, index_dir, max_to_keep=max_to_keep)
        self.restored: str | None = None
        """The path `restore` read (not always `latest`: a damaged latest one is skipped)."""
        with tf.init_scope():
            # Tracked from the first save on: a checkpoint written before digests existed has no entry for it.
            self._base_digest = None if base_digest is None else tf.Variable(base_digest, trainable=False,
                                                                              name=_BASE_DIGEST)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def _check_matches(self, path: str) -> None:
        """Raises ValueError naming the first key or shape in which the checkpoint at `path` differs."""
        reader, saved = _reader(path), {}
        for name, shape in reader.get_variable_to_shape_map().items():
            if _SLOT_MARKER in name:  # the optimizer's, restored with it, not a model variable
                continue
            if name.endswith(_VALUE_SUFFIX) and name.split("/", 1)[0] in self._checked_scopes:
                scope, key = name[: -len(_VALUE_SUFFIX)].split("/", 1)
                saved[f"{scope}/{_unescape(key)}"] = tuple(shape)
        for key, shape in self.shapes.items():
            if key not in saved:
                raise ValueError(f"{path} holds no variable {key!r}: it was written for another model or version.")
            if saved[key] != shape:
                raise ValueError(f"{path} holds {key!r} with shape {saved[key]}, but the model's is {shape}.")
        extra = sorted(set(saved) - set(self.shapes))
        if extra:
            raise ValueError(f"{path} holds variable {extra[0]!r}, which the model does not have.")
        if self._base_digest is not None and reader.has_tensor(_BASE_DIGEST + _VALUE_SUFFIX):
            if reader.get_tensor(_BASE_DIGEST + _VALUE_SUFFIX) != self._base_digest.numpy():
                raise ValueError(f"{path} was trained on another base model (its frozen weights differ from this "
                                 "one's); resume with the base the run started from, or start a new run.")

    def restore(self) -> int:
        """Restores the newest usable checkpoint in `directory`; returns its step (0 when there is none).

        A damaged checkpoint (truncated or corrupt files) is skipped for the one before it, with a warning once
        one restores (when none does, the error alone names them all).

        Raises:
            ValueError: if checkpoints exist but none can be read, or the newest readable one was written for a
                model with other variables (names or shapes; the message names the first difference).
            OSError: if `directory` exists but cannot be listed (e.g. no read permission).
        """
        # The files on disk, not only the `checkpoint` index: a damaged index must not hide complete checkpoints.
        on_disk = [os.path.join(self.directory, name[: -len(".index")]) for name in self._listing()
                   if fnmatch.fnmatch(name, "ckpt-*.index")]
        candidates = sorted(set(on_disk) | set(self.manager.checkpoints), key=_checkpoint_number, reverse=True)
        problems = []
        for path in candidates:
            try:
                _reader(path)  # reads the index: fails at once on a damaged one
            except tf.errors.OpError as error:
                problems.append((path, _first_line(error)))
                continue
            self._check_matches(path)
            try:
                # expect_partial: values beyond the model's and optimizer's (the trainer's log window, tracked only
                # once a run starts) may stay unread; `_check_matches` has already held the model's to the file.
                self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
            except (tf.errors.OpError, IndexError) as error:  # IndexError: a truncated data file
                problems.append((path, _first_line(error)))
                continue
            for damaged, reason in problems:
                logging.warning("Checkpoint %s is damaged (%s); restored %s instead.", damaged, reason, path)
            self.restored = path
            return int(self.step.numpy())
        if problems:
            damage = "; ".join(f"{damaged}: {reason}" for damaged, reason in problems)
            raise ValueError(f"No usable checkpoint in {self.directory} ({damage}); move the directory aside to "
                             "start over.")
        return 0

    def _listing(self) -> list[str]:
        # Not a glob: it finds nothing in a directory it may not read, and training would silently start over.
        if not tf.io.gfile.isdir(self.directory):
            return []
        try:
            return tf.io.gfile.listdir(self.directory)
        except tf.errors.OpError as error:
            raise OSError(
                f"Cannot list the checkpoint directory {self.directory} ({error.message.splitlines()[-1]}); give "
                "this user read access to it, or move it aside to start over."
            ) from None

    def save(self, step: int) -> str:
        """Writes the state after `step` updates; returns the checkpoint's path (a temporary one on non-chiefs).

        Raises:
            OSError: if the files cannot be written (e.g. a full disk); the partial ones are removed and the
                previous checkpoint stays the latest.
        """
        self.step.assign(step)
        if self._base_digest is not None:
            self.checkpoint.base_digest = self._base_digest
        if self.chief:
            try:
                return self.manager.save(checkpoint_number=step)
            except tf.errors.OpError as error:  # e.g. a full disk: drop the partial files, keep the last checkpoint
                complete = self.manager.checkpoints
                # Names matched, not a glob of the path: "[", "*" or "?" in the directory would be read as a pattern.
                partials = [os.path.join(self.directory, name.rstrip("/")) for name in self._listing()
                            if fnmatch.fnmatch(name.rstrip("/"), f"ckpt-{step}[._]*")]
                for partial in partials:
                    if any(partial.startswith(path + ".") for path in complete):
                        continue
                    if tf.io.gfile.isdir(partial):
                        tf.io.gfile.rmtree(partial)
                    else:
                        tf.io.gfile.remove(partial)
                kept = self.latest or "none was written yet"
                raise OSError(
                    f"Could not write checkpoint {step} in {self.directory} ({error.message.splitlines()[-1]}); "
                    f"the last complete one ({kept}) is kept."
                ) from None
        scratch = tempfile.mkdtemp(prefix="tf_lm-worker-checkpoint-")
        try:
            return self.checkpoint.write(os.path.join(scratch, "ckpt"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _first_line(error: Exception) -> str:
    """Why a checkpoint could not be read, in one line (TensorFlow's messages run to several)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
