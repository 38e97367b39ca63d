"""`WarmupCosine`: nanoGPT's get_lr, step by step, and its bad arguments."""

import math

import keras
import pytest

from tf_lm.training import WarmupCosine


def reference(step, peak=1e-3, floor=1e-4, warmup=10, decay=100):
    """nanoGPT's get_lr, with (step+1)/(warmup+1) warm-up."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step > decay:
        return floor
    ratio = (step - warmup) / (decay - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


@pytest.mark.parametrize("step", [0, 1, 9, 10, 11, 50, 99, 100, 101, 500])
def test_matches_the_reference(step):
    schedule = WarmupCosine(1e-3, 1e-4, warmup_steps=10, decay_steps=100)
    assert float(schedule(step)) == pytest.approx(reference(step), rel=1e-5)


def test_zero_warmup_starts_at_the_peak():
    assert float(WarmupCosine(1e-3, 0.0, 0, 10)(0)) == pytest.approx(1e-3)


def test_serialises_through_keras():
    schedule = WarmupCosine(1e-3, 1e-4, 10, 100)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert clone.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "args, message",
    [((0.0, 0.0, 1, 10), "learning_rate must be > 0"), ((1e-3, 1e-2, 1, 10), "min_learning_rate must be in"),
     ((1e-3, -1e-4, 1, 10), "min_learning_rate must be in"), ((1e-3, 1e-4, 10, 10), "warmup_steps < decay_steps")],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosine(*args)
