"""`make demo`: loss curve, samples before and after training, and the known-word share that compares them."""

import re

import pytest
from conftest import failure_line, run_module

from experiments.demo import PROMPTS, known_word_share


def test_known_word_share_counts_words_of_two_or_more_letters():
    assert known_word_share(["The cat, a dog", "x Thee"], {"The", "cat", "Thee"}) == 3 / 4
    assert known_word_share(["  \n"], {"The"}) == 0.0


@pytest.mark.slow  # 55 s: the nano model's compiles, sampling and training, end to end
def test_demo_prints_the_loss_curve_and_samples_before_and_after(tmp_path):
    model_dir = tmp_path / "demo"
    result = run_module("experiments.demo", f"--model_dir={model_dir}", "--steps=20", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"\nloss curve: {model_dir}/loss.png\n" in result.stdout
    assert (model_dir / "loss.png").stat().st_size > 0
    before, after = result.stdout.split("\nbefore training (")[1].split("\nafter 20 steps (")
    for section in (before, after):
        assert re.match(r"\d+% of the sampled words occur in the corpus\):\n", section)
        samples = [line[4:] for line in section.splitlines() if line.startswith("  | ")]
        assert all(any(sample.startswith(prompt) for sample in samples) for prompt in PROMPTS)


def test_a_step_count_below_one_is_refused_before_tensorflow_loads():
    result = run_module("experiments.demo", "--steps=0", timeout=120)
    assert failure_line(result) == "error: flag --steps=0: 0 is not a positive integer"
