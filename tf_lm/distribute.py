"""`resolve_strategy`: the one place a `tf.distribute.Strategy` is created, from a name such as train_lm's `--strategy`.

Everything that trains builds its model, optimizer and metrics inside `strategy.scope()` and feeds it a
dataset distributed with `strategy.distribute_datasets_from_function`, so the same code runs on one CPU,
several GPUs, a TPU or a cluster of workers.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket

import tensorflow as tf

from tf_lm.configs import STRATEGIES


def _tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    # TPU_NAME names a TPU node (and is how "auto" saw it); "local" would look for chips on this machine instead.
    tpu = tpu or os.environ.get("TPU_NAME") or None
    where = repr(tpu) if tpu else "this machine (local)"
    hint = "pass `tpu=<name or grpc://host:port>` on a TPU VM or pod, or pick another strategy"
    if tpu and tpu.startswith("grpc://"):
        # TensorFlow waits forever for a gRPC server that is not there; a plain connect fails in seconds.
        host, _, port = tpu[len("grpc://"):].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise ValueError(f"No TPU is reachable at {where}; {hint}.") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as error:
        raise ValueError(
            f"No TPU is reachable at {where}; {hint} ({type(error).__name__})."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _tpu_visible(tpu: str | None) -> bool:
    # A TPU VM exposes its chips as /dev/accel*; a TPU node is named by TPU_NAME. Without either, probing
    # would only waste a connection attempt.
    return bool(tpu or os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0"))


def _is_address(address) -> bool:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _cluster_from_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    example = ('e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
               '"index": 0}}')
    if not raw:
        raise ValueError(
            f"The multi_worker strategy needs the TF_CONFIG environment variable describing the cluster and this "
            f"task, {example}."
        )
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); fix the environment variable.") from None
    if not isinstance(tf_config, dict) or "cluster" not in tf_config or "task" not in tf_config:
        raise ValueError(f"TF_CONFIG must hold a 'cluster' and a 'task', {example}. Received: TF_CONFIG={raw}")
    # TensorFlow reads TF_CONFIG without checking it and fails later with a KeyError or TypeError deep inside.
    cluster, task = tf_config["cluster"], tf_config["task"]
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(addresses, list) and addresses and all(map(_is_address, addresses))
            for addresses in cluster.values()):
        raise ValueError(f"TF_CONFIG's cluster must map each job to a list of host:port addresses, {example}. "
                         f"Received: TF_CONFIG={raw}")
    # A parameter server's job would make MultiWorkerMirroredStrategy wait for it forever.
    other_jobs = sorted(set(cluster) - {"chief", "worker", "evaluator"})
    if other_jobs:
        raise ValueError(f"TF_CONFIG's cluster may hold only 'chief', 'worker' and 'evaluator' jobs, which "
                         f"MultiWorkerMirroredStrategy trains with; remove {other_jobs}. Received: TF_CONFIG={raw}")
    task_type, index = (task.get("type"), task.get("index")) if isinstance(task, dict) else (None, None)
    # An evaluator or parameter server is not a training task of MultiWorkerMirroredStrategy.
    if task_type not in ("worker", "chief") or task_type not in cluster:
        raise ValueError(f"TF_CONFIG's task type must be 'worker' or 'chief', a job of its cluster, {example}. "
                         f"Received: TF_CONFIG={raw}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG's task index must be a position in its cluster's {task_type!r} list "
                         f"(0 to {len(cluster[task_type]) - 1}). Received: TF_CONFIG={raw}")
    return tf_config


def resolve_strategy(name: str = "auto", tpu: str | None = None) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` named `name`, always a real strategy object.

    Args:
        name: str, default "auto". One of:
            "auto": a TPU if one is visible (`tpu` given, `TPU_NAME` set or a TPU VM), else "multi_worker" if
                `TF_CONFIG` is set, else all GPUs (`MirroredStrategy`) if there are several, else the one GPU,
                else the CPU.
            "cpu": the CPU: the default strategy on a machine without GPUs, else `OneDeviceStrategy("/cpu:0")`.
            "gpu": the default strategy, which places everything on `/gpu:0`; fails without a GPU.
            "mirrored": `MirroredStrategy` over all GPUs, or over all logical CPU devices when there is no GPU.
            "tpu": `TPUStrategy` on the TPU named by `tpu` (default: `TPU_NAME`, else the local TPU VM).
            "multi_worker": `MultiWorkerMirroredStrategy`, the cluster and this task taken from `TF_CONFIG`.
        tpu: str, default None. TPU name or `grpc://` address; only meaningful with "tpu" or "auto".

    Returns:
        A `tf.distribute.Strategy`; `strategy.num_replicas_in_sync` is the number of model replicas.

    Raises:
        ValueError: for an unknown name, `tpu` with a strategy other than "tpu"/"auto", "gpu" without a GPU,
            "tpu" without a reachable TPU, or "multi_worker" without a valid `TF_CONFIG`.

    Example:
    >>> strategy = resolve_strategy("auto")
    >>> strategy.num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {list(STRATEGIES)}.")
    if tpu and name not in ("auto", "tpu"):
        raise ValueError(f"tpu={tpu!r} only applies to the strategy 'tpu' or 'auto'. Received: name={name!r}")
    if name == "auto" and os.environ.get("TF_CONFIG") and not _tpu_visible(tpu):
        # A worker of a cluster: trained alone, each would take itself for the chief and train on its own.
        name = "multi_worker"
    if name == "multi_worker":
        # Before anything lists devices: collective ops must be configured before TensorFlow's context starts.
        _cluster_from_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if _tpu_visible(tpu):
            return _tpu_strategy(tpu)
        name = "mirrored" if len(gpus) > 1 else "gpu" if gpus else "cpu"
    # The default strategy, not OneDeviceStrategy, for one device: only under it can a single XLA program hold
    # the whole step, optimizer update included (Keras 3's update needs a replica context otherwise).
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0") if gpus else tf.distribute.get_strategy()
    if name == "gpu":
        if not gpus:
            raise ValueError("The strategy 'gpu' needs a GPU and TensorFlow sees none; check the CUDA install or "
                             "use 'cpu'.")
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return _tpu_strategy(tpu)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs: the chief, else worker 0, else the only process.

    Args:
        strategy: a strategy from `resolve_strategy`.

    Returns:
        bool. True for every single-process strategy.

    Example:
    >>> is_chief(resolve_strategy("cpu"))
    True
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def is_default_strategy(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is TensorFlow's default strategy (one device, no replicas), in or out of any scope.

    Example:
    >>> is_default_strategy(resolve_strategy("cpu"))
    True
    """
    # Not `strategy is tf.distribute.get_strategy()`: inside `strategy.scope()` that holds for every strategy.
    # Scopes are per thread, so a fresh thread, outside all of them, sees the default one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return strategy is pool.submit(tf.distribute.get_strategy).result()
