"""`resolve_strategy`: names map to strategies, bad names and missing hardware fail with one clear sentence."""

import json
import types

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


def test_auto_joins_the_cluster_tf_config_describes(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    joined = object()
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: joined)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert resolve_strategy("auto") is joined
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker"}}')
    with pytest.raises(ValueError, match="TF_CONFIG's cluster must map each job to a list"):
        resolve_strategy("auto")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        resolve_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_strategy("multi_worker")


def test_mirrored_spans_the_logical_cpus():
    strategy = resolve_strategy("mirrored")  # conftest gives each test process two logical CPUs
    assert (strategy.num_replicas_in_sync, is_chief(strategy)) == (2, True)


def test_auto_connects_to_the_tpu_named_by_tpu_name(monkeypatch):
    # No TPU here: a resolver that records what it was asked for stands in for the real one.
    asked = []

    def resolver(tpu=None):
        asked.append(tpu)
        raise ValueError("no such TPU")

    monkeypatch.setenv("TPU_NAME", "my-tpu-node")
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver)
    with pytest.raises(ValueError, match="No TPU is reachable at 'my-tpu-node'"):
        resolve_strategy("auto")
    assert asked == ["my-tpu-node"]
    # A TPU VM may also carry a TF_CONFIG: the named TPU still wins over joining a multi-worker cluster.
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: pytest.fail("joined the cluster"))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="No TPU is reachable at 'my-tpu-node'"):
        resolve_strategy("auto")
    assert asked[-1] == "my-tpu-node"


def test_in_a_cluster_with_a_chief_job_only_the_chief_is_chief():
    spec = tf.train.ClusterSpec({"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]})

    def strategy(task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, task_type=task_type, task_id=task_id)
        return types.SimpleNamespace(cluster_resolver=resolver)

    assert is_chief(strategy("chief", 0))
    assert not is_chief(strategy("worker", 0)) and not is_chief(strategy("worker", 1))
    # Without a chief job, worker 0 writes the shared outputs.
    alone = tf.distribute.cluster_resolver.SimpleClusterResolver(tf.train.ClusterSpec({"worker": ["h1:1", "h2:1"]}),
                                                                 task_type="worker", task_id=0)
    assert is_chief(types.SimpleNamespace(cluster_resolver=alone))


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ({"cluster": {"worker": "host1:1234"}, "task": {"type": "worker", "index": 0}}, "list of host:port"),
        ({"cluster": {"worker": ["host1"]}, "task": {"type": "worker", "index": 0}}, "list of host:port"),
        ({"cluster": {"worker": ["host1:1234"]}, "task": {"type": "evaluator", "index": 0}}, "'worker' or 'chief'"),
        ({"cluster": {"worker": ["host1:1234"]}, "task": {"type": "chief", "index": 0}}, "'worker' or 'chief'"),
        ({"cluster": {"worker": ["host1:1234"]}, "task": {"type": "worker", "index": 1}}, r"\(0 to 0\)"),
        ({"cluster": {"worker": ["host1:1234"]}, "task": {"type": "worker", "index": "0"}}, r"\(0 to 0\)"),
        ({"cluster": {"worker": ["host1:1234"]}, "task": "worker"}, "'worker' or 'chief'"),
        ({"cluster": {"worker": ["host1:1234"], "ps": ["host2:1234"]}, "task": {"type": "worker", "index": 0}},
         r"remove \['ps'\]"),  # the strategy would wait for the parameter server forever
    ],
)
def test_a_malformed_tf_config_is_one_sentence_naming_it(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    with pytest.raises(ValueError, match=message) as raised:
        resolve_strategy("multi_worker")
    assert "Received: TF_CONFIG=" in str(raised.value) and "\n" not in str(raised.value)
