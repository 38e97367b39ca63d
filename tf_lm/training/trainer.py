"""`Trainer`: the custom distributed training step and loop — evaluation, checkpoints, NaN and signal handling.

The trainer owns its step instead of using `model.fit`: Keras 3 `fit` fails under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585), and owning the step gives exact control of the
checkpointed input position, so a resumed run continues the very batch stream it left.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_lm.configs import LMConfig, TrainConfig
from tf_lm.convert import load_gpt2_state
from tf_lm.distribute import is_chief, is_default_strategy
from tf_lm.fileio import normalise_path
from tf_lm.model import TransformerLM
from tf_lm.training.checkpoints import Checkpoints
from tf_lm.training.lora import enable_lora, lora_targets
from tf_lm.training.metrics import MetricsLog, derived, summed_next_token_loss
from tf_lm.training.optimizer import make_optimizer
from tf_lm.training.schedule import WarmupCosine
from tf_lm.training.signals import StopOnSignal


class TrainingDiverged(ValueError):
    """The loss (or the weights) became NaN/inf; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT arrived (here or, under multi-worker training, on another worker); a checkpoint of the
    current step was written first. `exit_code` is the shell's for the signal: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class _ProgressBar:
    """Keras's progress bar over a run's steps, or nothing when not `shown`.

    The bar's line gets its newline only at the last step, so a line printed in between, or what reports a run that
    stops early (`stopped: ...` on stderr after a signal, an error), would be glued to it: `end_line` ends it first,
    and leaving the `with` block ends it however the run ends.
    """

    def __init__(self, steps: int, shown: bool):
        self.steps = steps
        self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "tok/s"]) if shown else None
        self.line_open = False

    def update(self, step: int, values: list) -> None:
        if self.bar is not None:
            self.bar.update(step, values)
            self.line_open = step < self.steps  # the last step's update ends the line itself

    def end_line(self) -> None:
        if self.line_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.line_open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.end_line()


def weights_digest(model: keras.Model) -> str:
    """sha256 of all model weights' bytes: equal digests mean bit-identical weights (e.g. across workers)."""
    return variables_digest(model.weights)


def variables_digest(variables: Sequence) -> str:
    """sha256 of the variables' bytes, in order."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def training_flops_per_token(model: TransformerLM) -> int:
    """Training FLOPs per token of `model` as it is set to train: what MFU counts.

    `LMConfig.flops_per_token` (6 per weight: forward, the input's gradient and the weight's), less 2 per weight
    that does not train, since it has no weight gradient (LoRA's frozen base, and the tied head of a frozen token
    table), plus 6 per parameter of each projection's LoRA factors A and B, which run as matmuls of their own. When
    nothing under the first block's `qkv` trains (LoRA's default), its input gradient is not formed either: 2 less
    per weight of it. Factors of the token table are merged into it once per step, not per token (about 10·V·r·d
    per step: under 0.1% of a step at GPT-2's shapes, rank 8, batch 12): not counted. As MFU conventionally does,
    biases and LayerNorms count as weights (1% of the nano preset's count). The matmul FLOPs XLA runs for a step
    are within 2% of this count (`tests/test_trainer.py`).

    Args:
        model: a built `TransformerLM`, with LoRA enabled or not.

    Returns:
        int, FLOPs per token of one training step (forward and backward) over `model.config.block_size`.

    Example:
    >>> training_flops_per_token(TransformerLM(LMConfig.preset("nano")))  # every weight trains
    5203200
    """
    config = model.config
    projections = lora_targets(model)
    norms = [model.final_norm] + [norm for block in model.blocks for norm in (block.attention_norm, block.mlp_norm)]

    def size(weights):
        return sum(int(np.prod(weight.shape)) for weight in weights)

    # A LoRA projection's trainable weights are its factors; its kernel and bias are among the non-trainable ones.
    frozen = size(w for layer in projections + norms for w in layer.non_trainable_weights)
    if not model.embedding.token_embedding.trainable_weights:
        frozen += config.n_embd * config.vocab_size  # the head's table: no weight gradient
    factors = size(w for layer in projections if layer.lora_enabled for w in layer.trainable_weights)
    flops = config.flops_per_token(config.block_size) - 2 * frozen + 6 * factors
    first = projections[0]  # block 0's qkv: its input is the first LayerNorm's output, over the embeddings
    if not (model.embedding.trainable_weights or model.blocks[0].attention_norm.trainable_weights):
        # dx = g·Wᵀ, and g·Bᵀ·Aᵀ with LoRA (g·Bᵀ itself is still formed: factor A's gradient needs it).
        flops -= 2 * size([first.kernel] + ([first.lora_kernel_a] if first.lora_enabled else []))
    return flops


def make_train_step(loss_fn: Callable, updates: list, strategy: tf.distribute.Strategy, grad_clip: float = 0.0,
                    jit_compile: bool = True, jit_update: bool = False) -> Callable:
    """The one training step of the project (the language model's `Trainer` and BERT fine-tuning use it).

    On the default strategy, forward, backward, clipping and the update are one (optionally XLA) program; under
    a distribution strategy the forward/backward pass is compiled per replica, gradients are summed across
    replicas before the global norm is taken (so clipping sees the true norm), and the update runs around it.
    Shapes may vary between calls (BERT's length buckets): on one device, a tf.data iterator's step is traced once
    for the iterator's element spec (None where shapes vary); otherwise each new shape traces once, then traces relax.

    Args:
        loss_fn: `(*batch) -> scalar float32`, this replica's share of the global batch's mean loss (the sum of
            its examples' losses divided by the global batch's count), so N replicas give the gradient of one
            device with the same global batch.
        updates: list of `(optimizer, variables)`: each optimizer updates its variables (e.g. a pretrained
            body and a new head at different learning rates). The first optimizer's `scale_loss` scales the loss
            (a `LossScaleOptimizer` under mixed_float16; identity otherwise, and for tf_keras optimizers).
        strategy: the `tf.distribute.Strategy` the variables and optimizers were built under.
        grad_clip: float, default 0. Clip the global gradient norm (over all `updates`) to this; 0 disables it.
        jit_compile: bool, default True. XLA-compile the step (per replica under a distribution strategy).
        jit_update: bool, default False. With `jit_compile` off, on one device: XLA-compile each Keras 3
            optimizer's update on its own, one fused pass over its weights and slots instead of one pass per
            elementwise op of AdamW (tf_keras optimizers, BERT's hf backend, do not compile and run as they are).

    Returns:
        `step(iterator, stop=False) -> (loss, gradient norm, stop)`: one update on `next(iterator)`, a tuple fed to
        `loss_fn`; the returned `stop` is true if any worker passed `stop=True` to this step. On the default
        strategy, `step.compiled` is the `tf.function(*batch)` it runs, for inspecting the program without
        running it (`step.compiled.experimental_get_compiler_ir(*batch)`).
    """
    variables = [v for _, group in updates for v in group]
    # Keras 3 optimizers scale the loss (a LossScaleOptimizer under mixed_float16); tf_keras ones (BERT's hf
    # backend, float32 or bfloat16 only) have no scaling.
    scale_loss = getattr(updates[0][0], "scale_loss", lambda loss: loss)
    bounds = np.cumsum([0] + [len(group) for _, group in updates])

    def loss_and_grads(*batch):
        with tf.GradientTape() as tape:
            loss = loss_fn(*batch)
            scaled_loss = scale_loss(loss)  # loss scaling under mixed_float16, identity otherwise
        # An untied embedding lookup (BERT's) has a sparse gradient with one slice per token, repeats included;
        # Keras 3's Adam would square each slice instead of their sum, so the rows are summed here first.
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in tape.gradient(scaled_loss, variables)]
        return loss, grads

    def clip(grads):
        norm = tf.linalg.global_norm(grads) / scale_loss(tf.constant(1.0))  # the unscaled gradient's norm
        if grad_clip > 0:
            factor = grad_clip / tf.maximum(norm, grad_clip)  # tf.clip_by_global_norm's rule
            grads = [g * tf.cast(factor, g.dtype) for g in grads]
        return grads, norm

    one_device = is_default_strategy(strategy)

    def compiled_update(optimizer, group):
        return tf.function(lambda grads: optimizer.apply_gradients(zip(grads, group)), jit_compile=True)

    # Under a strategy the update merges across replicas, which XLA cannot compile.
    appliers = [compiled_update(optimizer, group)
                if jit_update and one_device and not jit_compile and isinstance(optimizer, keras.optimizers.Optimizer)
                else lambda grads, optimizer=optimizer, group=group: optimizer.apply_gradients(zip(grads, group))
                for optimizer, group in updates]

    def apply(grads):
        for applier, start, end in zip(appliers, bounds[:-1], bounds[1:]):
            applier(grads[start:end])

    if one_device:
        def step(*batch):
            loss, grads = loss_and_grads(*batch)
            grads, norm = clip(grads)
            apply(grads)
            return loss, norm

        compiled = tf.function(step, jit_compile=jit_compile, reduce_retracing=True)

        def one_device_step(iterator, stop=False):
            # A tf.data iterator's spec leaves varying dimensions (BERT's bucket widths) as None: tracing for it
            # first gives one trace, not one for the first shape and another, relaxed, for the second.
            spec = getattr(iterator, "element_spec", None)
            if spec is not None and spec not in traced_specs:
                compiled.get_concrete_function(*spec)
                traced_specs.append(spec)
            return (*compiled(*next(iterator)), stop)

        traced_specs = []
        one_device_step.compiled = compiled
        return one_device_step

    compiled_loss_and_grads = tf.function(loss_and_grads, jit_compile=jit_compile)

    def replica_step(*batch_and_stop):
        *batch, stop = batch_and_stop
        loss, grads = compiled_loss_and_grads(*batch)
        context = tf.distribute.get_replica_context()
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        # The workers' stop requests ride on the loss's all-reduce: a signal on any one worker stops every
        # worker after the same step, so none is left waiting in a collective the others never join.
        stop = tf.zeros_like(loss) + stop  # made on this replica's device, as all_reduce needs
        loss, stop = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss, stop])
        grads, norm = clip(grads)
        # Optimizers sum the replicas' gradients again; hand each replica 1/N of the summed, clipped gradient
        # so that sum is the gradient itself.
        replicas = context.num_replicas_in_sync
        apply([g / replicas for g in grads])
        return loss, norm, stop

    @tf.function
    def distributed_step(iterator, stop):
        loss, norm, stop = strategy.run(replica_step, args=(*next(iterator), stop))
        local = strategy.experimental_local_results
        return local(loss)[0], local(norm)[0], local(stop)[0] > 0

    # A float tensor, not a Python bool, so a stop request does not retrace the step.
    return lambda iterator, stop=False: distributed_step(iterator, tf.constant(float(stop)))


class Trainer:
    """Trains a `TransformerLM` it is given, with its optimizer, under `strategy` with a custom step.

    The loss is the sparse cross-entropy of the logits, summed over every replica's tokens and divided by the
    global batch's token count, so N replicas give the same gradient as one device with the same global batch.
    Gradients are summed across replicas before the global norm is taken, so clipping sees the true norm.
    On one device (the default strategy) forward, backward, clipping and the AdamW update are one XLA
    program; under a distribution strategy the forward/backward pass is XLA-compiled per replica and the
    all-reduce and update run around it.

    `Trainer.from_config` builds the model and optimizer a `TrainConfig` describes (what `train_lm` runs); build
    them yourself, in `strategy.scope()`, to train another model or with another optimizer.

    Args:
        model: a built `TransformerLM`, created in `strategy.scope()`. Its `config.block_size` is the training
            window length.
        optimizer: a Keras 3 optimizer of `model.trainable_variables`, created in the same scope.
        config: `TrainConfig`: the loop's settings (steps, batch size, evaluation, checkpoints, clipping).
        strategy: from `tf_lm.distribute.resolve_strategy`.
        model_dir: str. Where checkpoints, metrics and logs are written (by the chief only).
        frozen: variables of `model` that neither train nor go into checkpoints, because a resume rebuilds them
            (LoRA's base weights, which come from the pretrained checkpoint again).
        evaluate_at_start: bool, default False. A fresh run evaluates once before its first step (a model that
            starts from pretrained weights).
        peak_flops: float or None. One device's measured matmul FLOP/s, for MFU (against it times the replicas);
            None leaves MFU out. MFU counts `training_flops_per_token(model)`: the tied head included, 2 FLOPs less
            per weight that does not train. Steps that beat the peak show it was measured low (on a busy machine):
            the run then goes on without MFU, and says so.
        jit_compile: bool, default True. XLA-compile the step.
        verbose: bool, default True. Show a progress bar (chief only).
        bits_unit: str, default "token". What a bit is per in the printed validation line ("char" for char models).

    Raises:
        ValueError: if the global batch does not divide evenly over the replicas.

    Example:
    >>> strategy = resolve_strategy()
    >>> with strategy.scope():
    ...     model = TransformerLM(LMConfig.preset("nano", vocab_size=65))
    ...     optimizer = keras.optimizers.SGD(0.1)
    >>> trainer = Trainer(model, optimizer, TrainConfig(steps=10), strategy, "runs/x")  # doctest: +SKIP
    >>> trainer.fit(train_dataset_fn, validation_dataset_fn)  # doctest: +SKIP
    """

    def __init__(self, model: TransformerLM, optimizer: keras.optimizers.Optimizer, config: TrainConfig,
                 strategy: tf.distribute.Strategy, model_dir: str, frozen: Sequence = (),
                 evaluate_at_start: bool = False, peak_flops: float | None = None, jit_compile: bool = True,
                 verbose: bool = True, bits_unit: str = "token"):
        replicas = strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(
                f"batch_size={config.batch_size} is not divisible by the {replicas} replicas of the strategy; "
                f"use a multiple of {replicas}."
            )
        self.model = model
        self.optimizer = optimizer
        self.config = config
        self.strategy = strategy
        self.model_dir = model_dir = normalise_path(model_dir)
        self.peak_flops = peak_flops
        self.chief = is_chief(strategy)
        self.verbose = verbose and self.chief
        self.bits_unit = bits_unit
        self.evaluate_at_start = evaluate_at_start
        # Only the default strategy lets Keras 3's optimizer update run inside one XLA program with the step.
        self.fused = is_default_strategy(strategy)
        self.tokens_per_step = config.batch_size * model.config.block_size
        self.flops_per_token = training_flops_per_token(model)
        # The open --log_every window's loss sum and step count, checkpointed beside the step: a run resumed from a
        # checkpoint off the grid (a SIGTERM's) then logs the averages a run that never stopped logs. A plain
        # variable, as the step is: host-side bookkeeping. float64, so the restored sum is the very one saved.
        with tf.init_scope():
            self.log_window = tf.Variable([0.0, 0.0], dtype=tf.float64, trainable=False, name="log_window")

        # LoRA's checkpoints hold only what trains, so a resume onto other frozen weights would otherwise pass.
        base_digest = variables_digest(frozen) if frozen else None
        frozen = {id(variable) for variable in frozen}
        self.checkpoints = Checkpoints(os.path.join(model_dir, "checkpoints"), model, optimizer, chief=self.chief,
                                       variables=[v for v in model.variables if id(v) not in frozen],
                                       base_digest=base_digest)
        self.train_step = make_train_step(
            self._loss, [(optimizer, model.trainable_variables)], strategy, config.grad_clip, jit_compile
        )
        """`train_step(iterator, stop=False)`: one optimizer update on the next batch; returns `(loss, gradient
        norm, stop)`, where `stop` is true if any worker passed `stop=True` to this step."""
        self._eval_step = self._make_eval_step(jit_compile)

    @classmethod
    def from_config(cls, model_config: LMConfig, config: TrainConfig, strategy: tf.distribute.Strategy,
                    model_dir: str, initial_state: dict | None = None, **kwargs) -> Trainer:
        """A trainer of a new `TransformerLM` of `model_config` and the AdamW that `config` describes.

        The model's dtype policy is `config.precision` (its own, passed to every layer: Keras's global policy
        is left as it was). With `config.lora_rank`, only LoRA factors train (`tf_lm.training.lora`). It seeds the
        whole process with `config.seed` (`keras.utils.set_random_seed`: Python, NumPy and TensorFlow), so every
        worker builds the same initial weights and dropout seeds.

        Args:
            model_config: `LMConfig`.
            config: `TrainConfig`.
            strategy: from `tf_lm.distribute.resolve_strategy`.
            model_dir: str.
            initial_state: dict or None. GPT-2-named weights (`tf_lm.pretrained.Pretrained.state_for`) the model
                starts from instead of its random initialisation; a fresh run then evaluates once before the
                first step. With `config.lora_rank`, checkpoints hold only what trains (the base is
                `initial_state` again on resume).
            **kwargs: the other arguments of `Trainer` (`peak_flops`, `jit_compile`, `verbose`, `bits_unit`).

        Example:
        >>> nano = LMConfig.preset("nano", vocab_size=65)
        >>> trainer = Trainer.from_config(nano, TrainConfig(steps=10), strategy, "runs/x")  # doctest: +SKIP
        """
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)  # same initialisation and dropout seeds on every worker
            model = TransformerLM(model_config, dtype=config.precision)
            if initial_state is not None:
                load_gpt2_state(model, initial_state)
            frozen = []
            if config.lora_rank:
                frozen = enable_lora(model, config.lora_rank, config.lora_alpha, config.lora_train_norms,
                                     config.lora_embeddings)
            schedule = WarmupCosine(config.learning_rate, config.min_learning_rate, config.warmup_steps, config.steps)
            optimizer = make_optimizer(model, schedule, config.weight_decay, config.beta1, config.beta2,
                                       config.precision)
        return cls(model, optimizer, config, strategy, model_dir, frozen=frozen,
                   evaluate_at_start=initial_state is not None, **kwargs)

    def parameter_report(self) -> dict:
        """`trainable` and `total` model parameters, and `optimizer_bytes`: the memory of the optimizer's state."""
        def count(variables):
            return sum(int(np.prod(variable.shape)) for variable in variables)

        optimizer_bytes = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in self.optimizer.variables)
        return {"trainable": count(self.model.trainable_weights), "total": count(self.model.weights),
                "optimizer_bytes": optimizer_bytes}

    # === The step ===
    def _loss(self, inputs, targets):
        logits = self.model(inputs, training=True)  # (b, T, V) float32
        token_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)  # (b, T)
        return tf.reduce_sum(token_losses) / self.tokens_per_step  # this replica's share of the global mean

    def _make_eval_step(self, jit_compile):
        compiled = tf.function(lambda inputs, targets: summed_next_token_loss(self.model, inputs, targets),
                               jit_compile=jit_compile)
        if self.fused:
            return compiled

        @tf.function
        def distributed_step(inputs, targets):
            # Called from a Python replica function (as in training), XLA places each replica's program on the
            # replica's device; handed to strategy.run directly, it reads the other replica's variables.
            total, count = self.strategy.run(lambda x, y: compiled(x, y), args=(inputs, targets))
            reduce = self.strategy.reduce
            return reduce(tf.distribute.ReduceOp.SUM, total, None), reduce(tf.distribute.ReduceOp.SUM, count, None)

        return distributed_step

    def _distribute(self, dataset_fn: Callable):
        if self.fused:
            return dataset_fn(None)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # === Evaluation ===
    def evaluate(self, validation_dataset_fn: Callable, steps: int | None = None) -> dict:
        """Mean loss per token (with perplexity and bits) over the first `steps` global validation batches.

        Args:
            validation_dataset_fn: `input_context -> tf.data.Dataset` of `(inputs, targets)` (per-replica batches
                when a context is given), e.g. `lm_datasets(...)[1]`.
            steps: int or None. Global batches to read; None means `config.eval_steps`.

        Returns:
            dict with `loss`, `perplexity`, `bits`.
        """
        steps = self.config.eval_steps if steps is None else steps

        def first_batches(context):
            # An input pipeline yields one batch per replica it feeds (two per global batch under a two-device
            # MirroredStrategy), so `steps` global batches are that many times `steps` of its elements.
            per_global_batch = 1 if context is None else context.num_replicas_in_sync // context.num_input_pipelines
            return validation_dataset_fn(context).take(steps * per_global_batch)

        dataset = self._distribute(first_batches)
        total, count = 0.0, 0.0
        for inputs, targets in dataset:
            batch_total, batch_count = self._eval_step(inputs, targets)
            total, count = total + float(batch_total), count + float(batch_count)
        if not count:
            raise ValueError("The validation split yielded no batch; use a longer corpus or a smaller block_size.")
        return derived(total / count)

    # === The loop ===
    def _save(self, step: int) -> None:
        finite = all(bool(tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float32)))) for v in self.model.weights)
        if not finite:
            self._diverged(step, "the weights")
        self.checkpoints.save(step)

    def _diverged(self, step: int, what: str):
        kept = self.checkpoints.latest or "none was written yet"
        raise TrainingDiverged(
            f"Training diverged: {what} became NaN/inf at step {step}; stopped, and the last good checkpoint "
            f"({kept}) is kept. Lower learning_rate, raise warmup_steps or set grad_clip, then rerun."
        )

    def fit(self, train_dataset_fn: Callable, validation_dataset_fn: Callable) -> dict:
        """Trains from the latest checkpoint in `model_dir/checkpoints` (or from scratch) to `config.steps`.

        Args:
            train_dataset_fn: `(start_step, input_context) -> tf.data.Dataset`, infinite, whose batch at global
                step s depends only on (seed, s), e.g. `lm_datasets(..., start_step=s, input_context=ctx)[0]`.
            validation_dataset_fn: `input_context -> tf.data.Dataset`, as for `evaluate`.

        Returns:
            dict: `start_step`, `step`, `train_loss` (mean over the last log window), `validation` (the last
            evaluation's dict), `tokens_per_second`, `mfu` (or None) and `weights_digest`.

        Raises:
            TrainingDiverged: when the loss or weights become NaN/inf (the last good checkpoint is kept).
            TrainingInterrupted: on SIGTERM or SIGINT (on any worker), after a checkpoint of the current step.
            KeyboardInterrupt: on a second SIGINT, at once.
            OSError: if writing a checkpoint or the metrics fails (e.g. a full disk); the last complete
                checkpoint is kept.
        """
        config = self.config
        start = self.checkpoints.restore()
        # Tracked only after the restore: a checkpoint written before the window was saved has no entry for it (its
        # first logged row then averages the steps since the resume). Tracking it restores a saved one at once.
        self.checkpoints.checkpoint.log_window = self.log_window
        window_sum, window_steps = (float(x) for x in self.log_window.numpy()) if start else (0.0, 0.0)
        if self.verbose and start:
            print(f"resuming from {self.checkpoints.restored} (step {start} of {config.steps})", flush=True)
        log = MetricsLog(self.model_dir, start, enabled=self.chief)
        result = {"start_step": start, "step": start, "train_loss": None, "validation": None,
                  "tokens_per_second": None, "mfu": None}
        with StopOnSignal() as stop_request, _ProgressBar(config.steps, self.verbose) as progress:
            if start == 0 and self.evaluate_at_start:  # where a fine-tuning run starts: the pretrained model's loss
                result["validation"] = self._evaluate_and_log(validation_dataset_fn, log, 0, time.perf_counter(),
                                                              progress)
            iterator = iter(self._distribute(lambda context: train_dataset_fn(start, context)))
            # Throughput counts training steps only: evaluation, checkpoints and the first step (XLA compilation)
            # are left out of the clock.
            step_seconds, started = [], time.perf_counter()
            for step in range(start + 1, config.steps + 1):  # `step` updates done after this iteration
                logged = step % config.log_every == 0 or step == config.steps
                # The rate this step's update uses: read after it, the optimizer would give the next step's.
                # convert_to_numpy: a constant rate is a variable, mirrored under a strategy, which float() refuses.
                learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)) if logged else None
                step_start = time.perf_counter()
                loss, _, stop = self.train_step(iterator, stop_request.requested())
                loss, stop = float(loss), bool(stop)
                if step > start + 1:
                    step_seconds.append(time.perf_counter() - step_start)
                if not math.isfinite(loss):
                    self._diverged(step, "the loss")
                window_sum, window_steps = window_sum + loss, window_steps + 1
                recent = step_seconds[-50:]
                rate = len(recent) * self.tokens_per_step / sum(recent) if recent else None  # None: no step timed yet
                progress.update(step, [("loss", loss), ("tok/s", rate or 0.0)])
                if logged:
                    mfu = self._checked_mfu(rate, progress)
                    train = derived(window_sum / window_steps)
                    log.log(step, "train", **train, learning_rate=learning_rate, tokens_per_second=rate, mfu=mfu,
                            elapsed=time.perf_counter() - started)
                    result.update(train_loss=train["loss"], tokens_per_second=rate, mfu=mfu)
                    window_sum, window_steps = 0.0, 0.0
                if step % config.eval_every == 0 or step == config.steps:
                    result["validation"] = self._evaluate_and_log(validation_dataset_fn, log, step, started,
                                                                  progress)
                result["step"] = step
                if step % config.checkpoint_every == 0 or step == config.steps or stop:
                    self.log_window.assign([window_sum, window_steps])
                    self._save(step)
                if stop:
                    log.plot()
                    signum = stop_request.signal or signal.SIGTERM
                    cause = (f"by {signal.Signals(signum).name}" if stop_request.signal
                             else "because another worker was stopped")
                    raise TrainingInterrupted(
                        f"Stopped {cause} at step {step}; a checkpoint was written to "
                        f"{self.checkpoints.directory}, so rerunning the same command resumes from it.", signum
                    )
            log.plot()
        result["weights_digest"] = weights_digest(self.model)
        return result

    def _evaluate_and_log(self, validation_dataset_fn: Callable, log: MetricsLog, step: int, started: float,
                          progress: _ProgressBar) -> dict:
        v = self.evaluate(validation_dataset_fn)
        log.log(step, "validation", **v, elapsed=time.perf_counter() - started)
        if self.verbose:
            progress.end_line()
            print(f"step {step}: validation loss {v['loss']:.4f}, perplexity {v['perplexity']:.2f}, "
                  f"{v['bits']:.3f} bits/{self.bits_unit}", flush=True)
        log.plot()
        return v

    def _mfu(self, tokens_per_second: float | None) -> float | None:
        if not self.peak_flops or not tokens_per_second:
            return None
        # The rate is every replica's together; the peak was measured on one device.
        return self.flops_per_token * tokens_per_second / (self.peak_flops * self.strategy.num_replicas_in_sync)

    def _checked_mfu(self, tokens_per_second: float | None, progress: _ProgressBar) -> float | None:
        """`_mfu`, or None from the first rate that beats the peak on: no step outruns the machine's true peak, so
        a peak measured below what the steps reach was measured low (the machine was busy then), and MFU against
        it means nothing. The run goes on without MFU, and says why once."""
        mfu = self._mfu(tokens_per_second)
        if mfu is None or mfu <= 1.0:
            return mfu
        if self.verbose:
            progress.end_line()
            print(f"note: MFU is left out from here on: the steps reach {mfu:.2f}x the fp32 matmul peak measured "
                  f"at start-up ({self.peak_flops / 1e9:.1f} GFLOP/s per device), so that measurement came out low "
                  "(the machine was likely busy then), and any MFU logged before this reads high", flush=True)
        self.peak_flops = None
        return None
