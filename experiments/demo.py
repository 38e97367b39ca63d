"""`make demo`: trains a nano model on CPython's pydoc topics for about a minute, then samples a few lines.

The embedded corpus needs no download; a char-level nano model goes from random (about 6.7 bits/char) to
recognisable English-and-Python fragments in ~1000 steps on a laptop CPU. Rerunning resumes (or, when the run
is complete, only samples).

    python -m experiments.demo [--model_dir=runs/demo] [--steps=1000]
"""

from absl import flags, logging

from experiments.flags import flag_group, run_script
from experiments.train_lm import train
from tf_lm import LMConfig, generate
from tf_lm.training import TrainConfig, TrainingInterrupted

with flag_group("demo"):
    flags.DEFINE_string("model_dir", "runs/demo", "Where the demo run is written (rerun to resume).")
    flags.DEFINE_integer("steps", 1000, "Training steps.")
FLAGS = flags.FLAGS
PROMPTS = ("The ", "def ", "If the ")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    model_config = LMConfig.preset("nano")
    train_config = TrainConfig(dataset="builtin:pydoc", tokenizer="char", steps=FLAGS.steps, batch_size=12,
                               warmup_steps=min(100, FLAGS.steps - 1), eval_every=250, eval_steps=10,
                               checkpoint_every=250, log_every=25)
    try:
        trainer, tokenizer, _ = train(model_config, train_config, FLAGS.model_dir, strategy_name="auto")
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    except TrainingInterrupted as error:
        raise SystemExit(f"stopped: {error}") from None
    model = trainer.model
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    # generate never slides the window, so each line fills the model's context once.
    new = generate(model, prompts, max_new_tokens=model.config.block_size - max(map(len, prompts)),
                   sampler="top_k", top_k=10, temperature=0.8, seed=0)
    print("\nSamples (top-k 10, temperature 0.8):")
    for prompt, tokens in zip(PROMPTS, new):
        print("  " + repr(prompt + tokenizer.decode(tokens)))


if __name__ == "__main__":
    run_script(main)
