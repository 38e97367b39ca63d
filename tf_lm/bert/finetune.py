"""Fine-tuning a sequence classifier: the project's train step under a strategy, compiled evaluation, best model.

Two backends share the data, the loop, the outputs and the training step (`tf_lm.training.trainer.make_train_step`,
the language model's): `keras`, our `BertClassifier` on Keras 3 with a Keras 3 AdamW, and `hf`, transformers'
`TFBertForSequenceClassification` with its tf_keras AdamW (`tf_lm.bert.hub`, imported only for it).

Most of the speed over a plain `fit` comes from the data: with batches bucketed by length an SST-2 phrase
costs about 17 tokens of compute (8 buckets, real length 13), against about 40 when random batches are padded
to their longest member; the keras backend packs random batches' phrases into rows as wide as their longest
instead (`BertClassifier` called with `packed=True`), 14 tokens a phrase.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_lm.bert import data as data_lib
from tf_lm.bert import weights
from tf_lm.bert.config import FinetuneConfig, is_finite_number
from tf_lm.distribute import is_chief
from tf_lm.fileio import (
    EXPORT_MARKER,
    atomic_directory,
    atomic_write,
    check_replaceable,
    gfile,
    is_local,
    read_json,
    read_json_object,
)
from tf_lm.training.checkpoints import Checkpoints
from tf_lm.training.signals import StopOnSignal
from tf_lm.training.trainer import TrainingDiverged, TrainingInterrupted, make_train_step

BEST_DIR = "best"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
KERAS_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "run.json"
FINETUNE_CONFIG_FILE = "finetune_config.json"


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and F1: of class 1 for two classes, macro-averaged over classes otherwise.

    Example:
    >>> classification_metrics(np.array([1, 0, 1]), np.array([1, 1, 1]), num_labels=2)
    {'accuracy': 0.6666666666666666, 'f1': 0.8}
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    scores = []
    for c in ([1] if num_labels == 2 else range(num_labels)):
        true_positive = np.sum((predictions == c) & (labels == c))
        denominator = np.sum(predictions == c) + np.sum(labels == c)
        scores.append(2.0 * true_positive / denominator if denominator else 0.0)
    return {"accuracy": float(np.mean(labels == predictions)), "f1": float(np.mean(scores))}



@dataclasses.dataclass
class Classifier:
    """A model of either backend, with what the loop needs to know about it.

    Attributes:
        model: a `BertClassifier` (keras) or a `TF*ForSequenceClassification` (hf).
        tokenizer: a `WordPieceTokenizer` (keras) or a transformers tokenizer (hf); both callable as `data.encode`
            needs.
        forward: `(features, training) -> float logits [B, C]`.
        head_variables: the pooler's and classifier's trainable variables (trained at `head_lr_multiplier`).
        position_limit: int. The longest input the position embeddings cover.
        create_optimizer: `(variables, learning_rate, total_steps, warmup_steps, weight_decay) -> optimizer`, the
            backend's AdamW with linear warm-up and decay.
        save: `(directory, extra_json) -> None`, writes the model atomically as a Hugging Face checkpoint (and, for
            keras, `model.keras`).
    """

    model: object
    tokenizer: object
    forward: object
    head_variables: list
    position_limit: int
    create_optimizer: object
    save: object


def load_keras_classifier(model_name: str, num_labels: int, label_names: list[str] | None, precision: str,
                          seed: int, packed: bool = False) -> Classifier:
    """`BertClassifier.from_pretrained` and its WordPiece tokenizer; transformers is never imported.

    `seed` seeds the new head's initial weights and the dropout masks; `packed`: as `keras_classifier`.
    """
    from tf_lm.bert.model import BertClassifier
    from tf_lm.bert.tokenizer import WordPieceTokenizer

    keras.utils.set_random_seed(seed)
    directory = weights.resolve_local(model_name)
    model = BertClassifier.from_pretrained(directory, num_labels, label_names, dtype=precision)
    return keras_classifier(model, WordPieceTokenizer(directory), packed)


def keras_classifier(model, tokenizer, packed: bool = False) -> Classifier:
    """The `Classifier` of a `BertClassifier`; its export copies the tokenizer files of `tokenizer.directory`.

    With `packed` the training forward pass packs each batch's sequences into rows (evaluation does not: the
    logits are the same either way).
    """
    from tf_lm.bert import optimizer

    def save(target: str, extra_json: dict) -> None:
        with atomic_directory(target, EXPORT_MARKER, weights.EXPORT_KIND) as staging:
            weights.write_export(model, tokenizer.directory, staging, extra_json)
            model.save(os.path.join(staging, KERAS_FILE))

    def forward(features, training):
        return model(features, training=training, packed=packed and training)

    return Classifier(model, tokenizer, forward, model.head_variables(),
                      model.config.max_position_embeddings, optimizer.create_optimizer, save)


def load_hf_classifier(model_name: str, num_labels: int, label_names: list[str] | None, precision: str,
                       seed: int) -> Classifier:
    """transformers' `TF*ForSequenceClassification` and tokenizer, through `tf_lm.bert.hub` (`seed`: as keras)."""
    from tf_lm.bert import hub

    hub.set_seed(seed)
    model = hub.load_classifier(model_name, num_labels=num_labels, label_names=label_names, precision=precision)
    tokenizer = hub.load_tokenizer(model_name)

    def create_optimizer(variables, learning_rate, total_steps, warmup_steps, weight_decay):
        del variables  # a tf_keras optimizer creates its slots on the first update
        return hub.create_optimizer(learning_rate, total_steps, warmup_steps, weight_decay)

    return Classifier(model, tokenizer, lambda f, training: model(f, training=training).logits,
                      hub.head_variables(model), hub.position_limit(model), create_optimizer,
                      lambda target, extra_json: hub.save_pretrained(target, model, tokenizer, extra_json))


def load_classifier(model_name: str, num_labels: int, label_names: list[str] | None,
                    config: FinetuneConfig) -> Classifier:
    """The `Classifier` of `config.backend` in `config.precision`, seeded by `config.seed`; the keras one packs its
    training batches as `config.packs` says. Call in the strategy's scope."""
    if config.backend == "keras":
        return load_keras_classifier(model_name, num_labels, label_names, config.precision, config.seed, config.packs)
    return load_hf_classifier(model_name, num_labels, label_names, config.precision, config.seed)


class ClassifierTrainer:
    """Trains and evaluates a classifier of either backend under a strategy, with the project's train step.

    Args:
        forward: `(features, training) -> logits [B, C]` of a model built in `strategy.scope()`.
        updates: list of `(optimizer, variables)` as `make_train_step` takes them, built in the same scope.
        strategy: the `tf.distribute.Strategy`.
        jit_compile: bool, default False. XLA-compile the forward/backward pass and the eval forward pass.
        verbose: bool, default False. Show a progress bar with the loss during training (chief only).

    Example:
    >>> trainer = make_trainer(classifier, FinetuneConfig(), total_steps=250, strategy=strategy)
    >>> loss = trainer.train(dataset, steps=100)
    >>> metrics = trainer.evaluate(eval_dataset)
    """

    def __init__(self, forward, updates: list, strategy: tf.distribute.Strategy, jit_compile: bool = False,
                 verbose: bool = False):
        self.forward = forward
        self.strategy = strategy
        self.verbose = verbose and is_chief(strategy)
        # The update XLA-compiled on its own, the forward/backward pass not: XLA's bfloat16 dots are slower here.
        self.train_step = make_train_step(self._loss, updates, strategy, jit_compile=jit_compile, jit_update=True)
        # The eval step pulls its batch from the iterator inside one tf.function, so all batch shapes share a trace.
        self._logits = tf.function(lambda features: forward(features, training=False), jit_compile=jit_compile)
        self._eval_step = tf.function(self._distributed_eval_step)

    def _loss(self, features, labels, weights):
        logits = self.forward(features, training=True)  # [B, C]
        # Cross-entropy in float32 even if the model runs in lower precision.
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32))  # [B]
        return tf.reduce_sum(losses * weights)  # this replica's share of the global batch mean

    def _distributed_eval_step(self, iterator):
        def replica_step(features, labels, weights):
            return tf.nn.softmax(tf.cast(self._logits(features), tf.float32)), labels, weights  # [B, C], [B], [B]

        per_replica = self.strategy.run(replica_step, args=next(iterator))
        return tuple(self.strategy.gather(value, axis=0) for value in per_replica)

    def _distribute(self, dataset: tf.data.Dataset):
        return iter(self.strategy.experimental_distribute_dataset(dataset))

    def train(self, dataset: tf.data.Dataset, steps: int, stop=None) -> float:
        """Trains on the first `steps` batches of `dataset` (from `data.make_dataset`); returns their mean loss.

        Args:
            dataset: batches of `(features, labels, weights)`.
            steps: int. Batches to train on.
            stop: callable, default None. Asked after every step; when it returns True training stops early
                (`self.steps_done` says after how many steps, `self.losses` holds each step's loss).

        Raises:
            TrainingDiverged: when the loss becomes NaN/inf.
        """
        iterator = self._distribute(dataset.take(steps))
        progbar = keras.utils.Progbar(steps, stateful_metrics=["loss"]) if self.verbose else None
        self.steps_done, self.losses = 0, []
        for step in range(1, steps + 1):
            loss = float(self.train_step(iterator)[0])
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"Training diverged: the loss became {loss} at step {step} of this epoch; stopped. Lower "
                    "`learning_rate` or raise `warmup_fraction`, then rerun."
                )
            self.losses.append(loss)
            self.steps_done = step
            if progbar is not None:
                progbar.update(step, [("loss", loss)])
            if stop is not None and stop():
                break
        return sum(self.losses) / max(self.steps_done, 1)

    def predict(self, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities `[n, C]` and labels `[n]` of the real (weight > 0) rows of `dataset`."""
        probabilities, labels = [], []
        iterator = self._distribute(dataset)
        while True:
            try:
                outputs = self._eval_step(iterator)
            except tf.errors.OutOfRangeError:
                break
            probs, batch_labels, batch_weights = (np.asarray(v) for v in outputs)
            real = batch_weights > 0
            probabilities.append(probs[real])
            labels.append(batch_labels[real])
        return np.concatenate(probabilities), np.concatenate(labels)

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """Accuracy, F1 and mean cross-entropy over the real rows of `dataset`."""
        probabilities, labels = self.predict(dataset)
        metrics = classification_metrics(labels, probabilities.argmax(-1), probabilities.shape[-1])
        picked = probabilities[np.arange(len(labels)), labels]  # [n]
        metrics["loss"] = float(-np.mean(np.log(np.maximum(picked, 1e-12))))
        return metrics


class _EpochProgress(tf.Module):
    """The running totals of the epoch in progress, checkpointed with the model and optimizers, so that the record
    of an epoch a resume completes covers all of its steps (loss, examples, time), not only those after the resume.

    Attributes:
        loss_sum: float64 variable. The summed loss of the epoch's steps so far, added in step order.
        seconds: float64 variable. The time spent training in them (restarts excluded).
    """

    def __init__(self):
        super().__init__(name="epoch_progress")
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="loss_sum")
        self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")

    def reset(self) -> None:
        self.loss_sum.assign(0.0)
        self.seconds.assign(0.0)

    def add(self, losses: list[float], seconds: float) -> None:
        """Adds steps' `losses` one by one, as an uninterrupted epoch sums them, so a resume repeats its total."""
        total = float(self.loss_sum.numpy())
        for loss in losses:
            total += loss
        self.loss_sum.assign(total)
        self.seconds.assign_add(seconds)


def make_trainer(classifier: Classifier, config: FinetuneConfig, total_steps: int, strategy: tf.distribute.Strategy,
                 verbose: bool = False) -> ClassifierTrainer:
    """A `ClassifierTrainer` with AdamW (and a head AdamW if `config.head_lr_multiplier` != 1).

    The optimizers are built in `strategy.scope()`, warming up over `config.warmup_fraction` of `total_steps`
    and decaying linearly to 0 at `total_steps`.

    Example:
    >>> trainer = make_trainer(classifier, FinetuneConfig(learning_rate=2e-4, head_lr_multiplier=10), 250, strategy)
    """
    warmup_steps = int(config.warmup_fraction * total_steps)
    variables = classifier.model.trainable_variables
    groups = [variables]
    if config.head_lr_multiplier != 1:
        head = {id(v) for v in classifier.head_variables}
        groups = [[v for v in variables if id(v) not in head], [v for v in variables if id(v) in head]]
    rates = [config.learning_rate, config.learning_rate * config.head_lr_multiplier]
    with strategy.scope():
        updates = [(classifier.create_optimizer(group, rate, total_steps, warmup_steps, config.weight_decay), group)
                   for group, rate in zip(groups, rates)]
    trainer = ClassifierTrainer(classifier.forward, updates, strategy, config.jit_compile, verbose=verbose)
    trainer.optimizers = [optimizer for optimizer, _ in updates]
    return trainer


def _resolve_num_labels(num_labels: int | None, train_data: data_lib.TextClassificationData) -> int:
    if num_labels is None:
        num_labels = len(train_data.label_names) if train_data.label_names else int(train_data.labels.max()) + 1
        num_labels = max(num_labels, 2)
    if num_labels < 2:
        raise ValueError(f"A classifier needs `num_labels` >= 2. Received: `num_labels={num_labels}`")
    return num_labels


def best_on_disk(output_dir: str) -> dict:
    """The metrics record of the model already in `output_dir/best` ({} if there is none), so a rerun keeps it
    unless it does better; equal to an entry of the history when that evaluation's model is the one saved.

    Raises:
        ValueError: if its `metrics.json` is damaged: not a JSON object, or without a numeric `eval_accuracy`.
    """
    path = os.path.join(output_dir, BEST_DIR, METRICS_FILE)
    if not gfile(path).exists(path):
        return {}
    record = read_json_object(path)
    accuracy = record.get("eval_accuracy")
    if not is_finite_number(accuracy):
        found = "no eval_accuracy" if accuracy is None else f"eval_accuracy {accuracy!r}, not a number"
        raise ValueError(f"{path} is damaged: it records {found}; restore it, or remove it to let this run replace "
                         f"{BEST_DIR}/.")
    return record


def finetune(model_name: str, train_data: data_lib.TextClassificationData,
             eval_data: data_lib.TextClassificationData, config: FinetuneConfig, output_dir: str,
             strategy: tf.distribute.Strategy, num_labels: int | None = None, verbose: bool = False) -> list[dict]:
    """Fine-tunes `model_name` on `train_data`, evaluating on `eval_data` and keeping the best model.

    After every pass over the training data (and at the end of `max_steps`) the model is evaluated; when its
    accuracy beats the best so far, including a model already in `output_dir/best` from an earlier run, it is
    saved there atomically as a Hugging Face checkpoint (safetensors, config, tokenizer; the keras backend adds
    `model.keras`). `output_dir/history.json` holds the per-epoch metrics. A checkpoint of model, optimizers and
    the epoch's running totals is written to `output_dir/checkpoints` after every epoch and on SIGTERM/SIGINT; the
    same call then resumes from it, at the very batch (each epoch's shuffle is fixed by the seed and the epoch),
    and a call with another model, other data (compared by content), classes or config is refused before training.
    The checkpoints are removed when the run completes.

    Args:
        model_name: str. `"minilm"`, a checkpoint directory, or (hf backend) a hub id.
        train_data: training examples (`data.read_table` / `data.load_tfds`).
        eval_data: evaluation examples.
        config: a `FinetuneConfig` (its `backend` picks the model code).
        output_dir: str. Where `best/` and `history.json` go.
        strategy: from `tf_lm.distribute.resolve_strategy`.
        num_labels: int, default None. Classes; None infers them (ClassLabel names, else max label + 1).
        verbose: bool, default False. Show a progress bar during each epoch.

    Returns:
        list of dict, one per evaluation: epoch, step, train_loss, train_examples, train_seconds,
        train_examples_per_s (of all the epoch's steps, those before a resume included), eval accuracy, f1, loss
        and eval_seconds.

    Raises:
        ValueError: for an `output_dir` that is not new, empty or an earlier run's (nothing in it is touched), an
            interrupted run there of other settings (listing them), labels outside `num_labels`, `max_length`
            beyond the model's position limit, a batch size the replicas cannot split, or a model that cannot be
            loaded (damaged files included).
        TrainingDiverged: when the loss, or an evaluation's loss, becomes NaN/inf (no model of it is saved).
        TrainingInterrupted: on SIGTERM/SIGINT, after a checkpoint (its `signum` says which signal); an epoch the
            signal ended in its last step is evaluated (and its model saved if best) first.

    Example:
    >>> history = finetune("minilm", read_table("train.tsv"), read_table("dev.tsv"),
    ...                    FinetuneConfig(max_length=64, epochs=1), "runs/sst2", resolve_strategy("cpu"))
    """
    # Only a new, empty or earlier run's directory is written into: a run removes output_dir/checkpoints when done.
    earlier_run = (HISTORY_FILE, BEST_DIR, os.path.join(CHECKPOINT_DIR, RUN_FILE))
    if not any(gfile(output_dir).exists(os.path.join(output_dir, name)) for name in earlier_run):
        check_replaceable(output_dir, HISTORY_FILE)
    # best/ is replaced only if a run of ours wrote it, and only by a better model than its metrics.json records:
    # both are checked now, not after an epoch of training.
    check_replaceable(os.path.join(output_dir, BEST_DIR), EXPORT_MARKER, weights.EXPORT_KIND)
    best_accuracy = best_on_disk(output_dir).get("eval_accuracy", -1.0)
    # Read whatever the step: a history.json of another shape is not an earlier run's, and is not overwritten.
    earlier_history = _read_history(output_dir)
    num_labels = _resolve_num_labels(num_labels, train_data)
    for split in (train_data, eval_data):
        data_lib.check_labels(split, num_labels)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"`batch_size` must split evenly over the {strategy.num_replicas_in_sync} replicas. Received: "
            f"`batch_size={config.batch_size}`"
        )
    with strategy.scope():
        classifier = load_classifier(model_name, num_labels, train_data.label_names, config)
    limit = min(classifier.position_limit, classifier.tokenizer.model_max_length)
    if config.max_length > limit:
        raise ValueError(f"max_length {config.max_length} exceeds the {limit} positions of {model_name!r}; "
                         "lower `max_length`.")
    tokenizer = classifier.tokenizer
    train_ids = data_lib.encode(tokenizer, train_data.texts, config.max_length)
    steps_per_epoch = data_lib.count_batches(train_ids, config.batch_size, config.train_bucket_widths)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    trainer = make_trainer(classifier, config, total_steps, strategy, verbose=verbose)

    pad_id = tokenizer.pad_token_id or 0
    eval_ds = data_lib.make_dataset(
        data_lib.encode(tokenizer, eval_data.texts, config.max_length), eval_data.labels, config.batch_size,
        bucket_widths=config.bucket_widths, pad_id=pad_id,
    )
    chief = is_chief(strategy)
    progress = _EpochProgress()
    # By position: the hf backend's tf_keras variables have no Keras 3 path (a resume rebuilds the same model).
    checkpoints = Checkpoints(os.path.join(output_dir, CHECKPOINT_DIR), classifier.model,
                              [*trainer.optimizers, progress], chief=chief, max_to_keep=1, keyed_by="position")
    # What a resume must find unchanged. The data by content, not only by count: another file of as many examples
    # would resume onto other data. The classes: other names would resume silently, another count fail in restore.
    identity = {
        "model": model_name, "num_labels": num_labels,
        "label_names": None if train_data.label_names is None else list(train_data.label_names),
        "text_key": train_data.text_key, "label_key": train_data.label_key,
        "train_examples": len(train_data), "train_digest": train_data.digest(),
        "eval_examples": len(eval_data), "eval_digest": eval_data.digest(), **dataclasses.asdict(config),
    }
    step = _resume(checkpoints, identity)
    history = [record for record in earlier_history if record["step"] <= step]  # the evaluations it already made
    epoch = step // steps_per_epoch
    with StopOnSignal() as stop:
        while step < total_steps:
            epoch += 1
            done = step - (epoch - 1) * steps_per_epoch  # steps of this epoch an interrupted run already made
            steps = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch) - done
            if not done:  # else the checkpoint restored the interrupted epoch's totals
                progress.reset()
            # One shuffle per epoch, fixed by (seed, epoch): a resumed run skips to the very batch it stopped at.
            train_ds = data_lib.make_dataset(
                train_ids, train_data.labels, config.batch_size, shuffle=True, seed=config.seed + epoch - 1,
                bucket_widths=config.train_bucket_widths, pad_id=pad_id,
            ).skip(done)
            start = time.perf_counter()
            trainer.train(train_ds, steps, stop=stop.requested)
            progress.add(trainer.losses, time.perf_counter() - start)
            step += trainer.steps_done
            # An epoch a signal ended in its last step is complete, so it is evaluated before the run stops: the
            # checkpoint resumes after it, and nothing would evaluate it then.
            if trainer.steps_done == steps:
                epoch_steps = done + steps  # with those before a resume
                train_loss = float(progress.loss_sum.numpy()) / epoch_steps
                train_seconds = float(progress.seconds.numpy())
                # A whole epoch sees every example once; a cut one (max_steps) about its share of them.
                seen = round(len(train_data) * epoch_steps / steps_per_epoch)
                start = time.perf_counter()
                metrics = trainer.evaluate(eval_ds)
                # The last update can make the weights NaN after a finite loss: such a model is never the best.
                if not math.isfinite(metrics["loss"]):
                    raise TrainingDiverged(
                        f"Training diverged: the eval loss became {metrics['loss']} after step {step}; stopped "
                        "without saving the model. Lower `learning_rate` or raise `warmup_fraction`, then rerun."
                    )
                record = {
                    "epoch": epoch, "step": step, "train_loss": train_loss, "train_examples": seen,
                    "train_seconds": train_seconds, "train_examples_per_s": seen / train_seconds,
                    **{f"eval_{k}": v for k, v in metrics.items()}, "eval_seconds": time.perf_counter() - start,
                }
                history.append(record)
                logging.info(
                    "epoch %d (step %d/%d): train loss %.4f, %.1f examples/s; eval accuracy %.4f, f1 %.4f (%.1f s)",
                    epoch, step, total_steps, train_loss, record["train_examples_per_s"], metrics["accuracy"],
                    metrics["f1"], record["eval_seconds"],
                )
                if chief and metrics["accuracy"] > best_accuracy:
                    best_accuracy = metrics["accuracy"]
                    classifier.save(os.path.join(output_dir, BEST_DIR), {
                        METRICS_FILE: record, FINETUNE_CONFIG_FILE: dataclasses.asdict(config),
                    })
                if chief:
                    atomic_write(os.path.join(output_dir, HISTORY_FILE), json.dumps(history, indent=2))
            if stop.signal is not None:
                checkpoints.save(step)
                raise TrainingInterrupted(
                    f"Stopped by {signal.Signals(stop.signal).name} at step {step} of {total_steps}; a checkpoint "
                    f"was written to {checkpoints.directory}, so rerunning the same command resumes from it.",
                    stop.signal,
                )
            if step < total_steps:
                checkpoints.save(step)
    if chief:  # complete: the checkpoints only served a resume, and a rerun starts afresh
        with contextlib.suppress(Exception):  # what is left of them is never read again: a rerun starts afresh
            gfile(checkpoints.directory).rmtree(checkpoints.directory)
    return history


def _resume(checkpoints: Checkpoints, identity: dict) -> int:
    """Restores an interrupted run's checkpoint (step > 0) or records this run's identity (step 0).

    Raises:
        ValueError: if the interrupted run had other settings, listing them, or its checkpoint lacks state this
            version keeps (an older version's, without the epoch's running totals).
    """
    path = os.path.join(checkpoints.directory, RUN_FILE)
    if checkpoints.latest is None:
        atomic_write(path, json.dumps(identity, indent=2))
        return 0
    saved = read_json_object(path)
    changed = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
    if changed:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{checkpoints.directory} holds an interrupted run with other settings ({listed}); rerun "
                         "it with the same settings to resume, or pick another `output_dir`.")
    try:
        return checkpoints.restore()
    except AssertionError as error:  # tf.train.Checkpoint's word for state the checkpoint does not hold
        raise ValueError(f"{checkpoints.directory} was written by another version of tf_lm "
                         f"({str(error).splitlines()[0]}); move it aside to start the run over.") from None


def _read_history(output_dir: str) -> list[dict]:
    """The evaluations recorded in `output_dir`'s history.json ([] if there is none).

    Raises:
        ValueError: if `history.json` is damaged: not a JSON array of records, each with the epoch, step, eval
            accuracy and F1 that a run's report reads.
    """
    path = os.path.join(output_dir, HISTORY_FILE)
    if not gfile(path).exists(path):
        return []
    history = read_json(path)

    def is_record(record) -> bool:
        return (isinstance(record, dict) and all(type(record.get(key)) is int for key in ("epoch", "step"))
                and all(is_finite_number(record.get(key)) for key in ("eval_accuracy", "eval_f1")))

    if not isinstance(history, list) or not all(is_record(record) for record in history):
        raise ValueError(f"{path} is damaged: it is not a list of evaluation records (each with its epoch, step, "
                         "eval_accuracy and eval_f1); restore or remove it.")
    return history


def load_for_prediction(model_dir: str):
    """The `BertClassifier` in a fine-tuned directory of either backend: `model.keras` if there is one, else the
    Hugging Face checkpoint, which must hold the classifier its `config.json` describes.

    Raises:
        FileNotFoundError: if `model_dir` holds neither.
        ValueError: if its `model.keras` or `model.safetensors` is damaged, or the directory is not a fine-tuned
            classifier (a language model's, or a bare encoder's checkpoint, whose head would be random).
    """
    from tf_lm import artifacts
    from tf_lm.bert.model import BertClassifier

    keras_path = os.path.join(model_dir, KERAS_FILE)
    if gfile(keras_path).exists(keras_path):
        try:
            model = keras.models.load_model(keras_path, safe_mode=True)
        except Exception as error:  # Keras raises a zoo of types (even FileNotFoundError) for a damaged zip.
            raise ValueError(f"Could not load {keras_path}: the file is damaged "
                             f"({artifacts.keras_load_failure(keras_path, error)}); fine-tune again.") from None
        if not isinstance(model, BertClassifier):
            raise ValueError(f"{model_dir!r} holds a {type(model).__name__}, not a fine-tuned classifier; pass the "
                             "best/ directory of experiments.finetune_bert.")
        return model
    lm_file = os.path.join(artifacts.saved_dir(model_dir), artifacts.MODEL_FILE)
    if gfile(lm_file).exists(lm_file):
        raise ValueError(f"{model_dir!r} holds a TransformerLM (a language model of experiments.train_lm), not a "
                         "fine-tuned classifier; pass the best/ directory of experiments.finetune_bert.")
    safetensors_file = os.path.join(model_dir, weights.SAFETENSORS_FILE)
    if not gfile(safetensors_file).exists(safetensors_file):
        raise FileNotFoundError(f"No {KERAS_FILE} or {weights.SAFETENSORS_FILE} in {model_dir!r}; pass the best/ "
                                "directory of experiments.finetune_bert.")
    if not is_local(model_dir):  # safetensors opens local files only; model.keras is read anywhere
        raise ValueError(f"{model_dir!r} holds a Hugging Face checkpoint without {KERAS_FILE} (the hf backend's "
                         "output), which is read from local directories only; copy it to a local directory first.")
    return BertClassifier.from_pretrained(model_dir, require_head=True)


def fine_tuned_max_length(model_dir: str) -> int | None:
    """The `max_length` the model in `model_dir` (a `best/` of `finetune`) was fine-tuned at, from its
    `finetune_config.json`; None when the directory does not record it.

    Raises:
        ValueError: if `finetune_config.json` is damaged: not a JSON object, or its `max_length` not an integer >= 2.
    """
    path = os.path.join(model_dir, FINETUNE_CONFIG_FILE)
    if not gfile(path).exists(path):
        return None
    max_length = read_json_object(path).get("max_length")
    if max_length is not None and not (isinstance(max_length, int) and not isinstance(max_length, bool)
                                       and max_length >= 2):
        raise ValueError(f"{path} is damaged: its max_length is {max_length!r}, not an integer >= 2; restore it, or "
                         "pass `max_length` explicitly.")
    return max_length


def classify(model, tokenizer, texts: list[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class ids and their probabilities for `texts`.

    Args:
        model: a `BertClassifier`.
        tokenizer: its `WordPieceTokenizer`.
        texts: list of str.
        max_length: int, default 128. Longer texts are cut to this many tokens.

    Returns:
        (int array `[n]` of class ids, float array `[n]` of their probabilities).

    Example:
    >>> ids, probs = classify(model, tokenizer, ["a gorgeous film", "a dull mess"])
    """
    if not texts:
        raise ValueError("classify needs at least one text. Received: `texts=[]`")
    token_ids = data_lib.encode(tokenizer, texts, max_length)
    width = max(len(row) for row in token_ids)
    ids = np.full((len(texts), width), tokenizer.pad_token_id, np.int32)  # [n, T]
    mask = np.zeros((len(texts), width), np.int32)  # [n, T]
    for i, row in enumerate(token_ids):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    probabilities = tf.nn.softmax(model({"input_ids": ids, "attention_mask": mask})).numpy()  # [n, C]
    predictions = probabilities.argmax(-1)
    return predictions, probabilities[np.arange(len(texts)), predictions]
