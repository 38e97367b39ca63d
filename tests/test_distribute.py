"""`resolve_strategy`: names map to strategies, bad names and missing hardware fail with one clear sentence."""

import json
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tf_lm.distribute import is_chief, resolve_strategy


def test_cpu_is_the_default_strategy_and_chief():
    strategy = resolve_strategy("cpu")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy)


def test_auto_on_a_cpu_machine_is_the_cpu(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert resolve_strategy("auto") is tf.distribute.get_strategy()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "horovod"}, "Unknown strategy 'horovod'"),
        ({"name": "cpu", "tpu": "my-tpu"}, "only applies to the strategy 'tpu'"),
        ({"name": "gpu"}, "needs a GPU"),
        ({"name": "tpu"}, "No TPU is reachable"),
        ({"name": "tpu", "tpu": "grpc://127.0.0.1:1"}, "No TPU is reachable at 'grpc://127.0.0.1:1'"),
    ],
)
def test_bad_choices_raise_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_strategy(**kwargs)


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        resolve_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_strategy("multi_worker")


def test_mirrored_spans_logical_cpus_in_a_fresh_process():
    # Logical devices must be configured before TensorFlow initialises them, hence a fresh interpreter.
    script = textwrap.dedent(
        """
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tf_lm.distribute import is_chief, resolve_strategy
        strategy = resolve_strategy("mirrored")
        print(json.dumps({"replicas": strategy.num_replicas_in_sync, "chief": is_chief(strategy)}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"replicas": 2, "chief": True}
