"""Training records: one CSV, TensorBoard summaries and `loss.png`, plus the derived metrics and MFU."""

from __future__ import annotations

import csv
import io
import math
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tf_lm.fileio import atomic_write

# What TensorBoard's scalar plugin writes, spelled out: the tensorboard package (which `tf.summary.scalar` needs)
# is not a dependency, yet the events it reads are core TensorFlow.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()

_MAX_PEAK_REPEATS = 20  # `measure_matmul_peak`'s timings at most (small matmuls take microseconds)
FIELDS = ("step", "split", "loss", "perplexity", "bits", "learning_rate", "tokens_per_second", "mfu", "elapsed")


def derived(loss: float) -> dict:
    """Perplexity and bits per token (per character for a char tokenizer) from a mean loss in nats."""
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits": loss / math.log(2)}


def summed_next_token_loss(model, inputs, targets) -> tuple[tf.Tensor, tf.Tensor]:
    """`(sum of the tokens' cross-entropies in nats, number of tokens)` of one batch, in inference mode.

    Sums rather than means, so batches of any size (a split's short last one, replicas' shares) add up exactly.
    """
    logits = model(inputs, training=False)  # (b, T, V) float32
    token_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)  # (b, T)
    return tf.reduce_sum(token_losses), tf.cast(tf.size(token_losses), tf.float32)


def measure_matmul_peak(size: int = 2048, repeats: int = 3, seconds: float = 0.5) -> float:
    """The machine's fp32 matmul throughput in FLOP/s: the fastest of XLA-compiled `size`³ matmuls.

    MFU divides achieved training FLOP/s by this, so it is the same yardstick as the benchmark's. Another process's
    burst of work slows some matmuls, never speeds one up, so the fastest is the least disturbed: the matmul is
    timed `repeats` times, then again while the timing has taken under `seconds` (at most 20 times in all), so a
    short burst at start-up does not set the peak. (A machine busy throughout still measures low; the `Trainer`
    leaves MFU out when its steps beat the peak.)

    Example:
    >>> measure_matmul_peak(256) > 0
    True
    """
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)), jit_compile=True)
    matmul(a, b).numpy()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < seconds and len(times) < _MAX_PEAK_REPEATS):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def _values(row: dict) -> dict[str, float]:
    """The numbers of a metrics row, by name: its fields past step and split that hold one (blank ones do not)."""
    return {name: float(row[name]) for name in FIELDS[2:] if row.get(name) not in ("", None)}


class MetricsLog:
    """Appends rows to `<model_dir>/metrics.csv` (rewritten atomically), TensorBoard and `loss.png`.

    On resume, rows past the restored step are dropped: they came from steps that are about to be redone.

    Args:
        model_dir: str. Where `metrics.csv`, `loss.png` and `logs/` go.
        start_step: int, default 0. The step training resumes from.
        enabled: bool, default True. False on non-chief workers: nothing is written.
    """

    def __init__(self, model_dir: str, start_step: int = 0, enabled: bool = True):
        self.model_dir = model_dir
        self.enabled = enabled
        self.path = os.path.join(model_dir, "metrics.csv")
        self.rows: list[dict] = []
        # A resume keeps the rows up to its checkpoint's step; a run that restarts from step 0 logs all of its rows
        # again (its step-0 evaluation included).
        if enabled and start_step > 0 and tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                rows = list(csv.DictReader(io.StringIO(f.read())))
            try:
                self.rows = [row for row in rows if int(row["step"]) <= start_step]
            except (KeyError, TypeError, ValueError):  # edited by hand, or saved by a spreadsheet with ";"
                raise ValueError(f"{self.path} is damaged: it is not the comma-separated table with a step column "
                                 "that training writes; move it aside to resume.") from None
            for row in self.rows:  # TensorBoard is written again from these
                try:
                    _values(row)
                except ValueError:  # a number edited by hand
                    raise ValueError(f"{self.path} is damaged: a value of step {row['step']} is not a number; move "
                                     "it aside to resume.") from None
        self.writers = {}
        if enabled:
            self._restart_tensorboard()

    def _restart_tensorboard(self) -> None:
        """New TensorBoard event files holding the kept rows, replacing the earlier ones: those also hold the
        steps about to be redone, and TensorBoard would show both values of each. The old files are deleted only
        once the new ones are written, so a run killed in between shows a step twice but loses none."""
        for split in ("train", "validation"):
            directory = os.path.join(self.model_dir, "logs", split)
            earlier = tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))
            self.writers[split] = tf.summary.create_file_writer(directory)
            self._write_tensorboard(split, [row for row in self.rows if row["split"] == split])
            for path in earlier:
                tf.io.gfile.remove(path)

    def _write_tensorboard(self, split: str, rows: list[dict]) -> None:
        try:
            for row in rows:
                with self.writers[split].as_default(step=int(row["step"])):
                    for name, value in _values(row).items():
                        tf.summary.write(name, tf.constant(value), metadata=_SCALAR_METADATA)
            self.writers[split].flush()
        except tf.errors.OpError as error:  # a full disk reaches us as a TensorFlow error
            raise OSError(f"Could not write the TensorBoard log in {self.model_dir}: {error.message}") from None

    def log(self, step: int, split: str, **values) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: values.get(k, "") for k in FIELDS[2:]}}
        self.rows.append(row)
        self._write_tensorboard(split, [row])
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, table.getvalue())

    def plot(self) -> None:
        """Draws training and validation loss against step into `loss.png`."""
        if not self.enabled or not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or in a test
        from matplotlib import pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4))
        for split in ("train", "validation"):
            points = [(int(r["step"]), float(r["loss"])) for r in self.rows if r["split"] == split]
            if points:
                steps, losses = np.array(points).T
                axes.plot(steps, losses, marker="o" if split == "validation" else None, label=split)
        axes.set_xlabel("step")
        axes.set_ylabel("loss (nats per token)")
        axes.grid(alpha=0.3)
        axes.legend()
        write_png(figure, os.path.join(self.model_dir, "loss.png"))


def write_png(figure, path: str) -> None:
    """Writes a matplotlib `figure` as a PNG to `path` (any `tf.io.gfile` path, whole or not at all) and closes it."""
    from matplotlib import pyplot as plt

    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    atomic_write(path, image.getvalue())
