"""`make demo`: a nano char model learns CPython's reference-manual topics in about a minute; samples before and after.

The embedded corpus (pydoc's topics, 0.4 MB of English prose about Python) needs no download. The same prompts
are sampled from the model as initialised and as trained, and the share of sampled words that occur in the corpus
puts the difference in one number. The loss curve lands in <model_dir>/loss.png. Rerunning resumes (or, when the
run is complete, only samples).

    python -m experiments.demo [--model_dir=runs/demo] [--steps=1000]
"""

import re

from absl import flags, logging

from experiments.flags import flag_group, one_line_errors, reported_stops, run_script
from experiments.train_lm import train
from tf_lm.configs import LMConfig, TrainConfig
from tf_lm.data import open_source

with flag_group("demo"):
    flags.DEFINE_string("model_dir", "runs/demo", "Where the demo run is written (rerun to resume).")
    flags.DEFINE_integer("steps", 1000, "Training steps.", lower_bound=1)  # refused before TensorFlow loads
FLAGS = flags.FLAGS
DATASET = "builtin:pydoc"
# Openings of the manual's prose (not of its indented code and tables), so a trained model continues in English.
PROMPTS = ("An exception ", "This method ", "If the ", "The value of ")
NEW_CHARACTERS = 160  # past the 64-character context: generation slides its window
WORD = re.compile(r"[A-Za-z]{2,}")


def known_word_share(texts: list[str], vocabulary: set[str]) -> float:
    """The share of the words (two or more letters) in `texts` that occur in `vocabulary`."""
    words = [word for text in texts for word in WORD.findall(text)]
    return sum(word in vocabulary for word in words) / max(len(words), 1)


def continuations(model, tokenizer) -> list[str]:
    """What the model adds to each prompt: top-k 5 at temperature 0.6, seed 0."""
    from tf_lm.generation import generate

    new = generate(model, [tokenizer.encode(prompt) for prompt in PROMPTS], max_new_tokens=NEW_CHARACTERS,
                   sampler="top_k", top_k=5, temperature=0.6, seed=0)
    return [tokenizer.decode(tokens) for tokens in new]


def _train_demo():
    """Trains the demo's model; the configs are built here, inside main's error handling, so a bad --steps is one
    line."""
    # The Shakespeare quality settings (beta1 0.6, no weight decay) at three times its learning rate: in 1000
    # steps on this corpus, validation loss (20 batches) reached 1.63 at 3e-3 and 1.66 at 2e-3, where 1e-3 with the
    # library's beta1 0.9 and weight decay 0.1 gave 1.80.
    train_config = TrainConfig(dataset=DATASET, tokenizer="char", steps=FLAGS.steps, batch_size=12,
                               learning_rate=3e-3, min_learning_rate=3e-4, beta1=0.6, weight_decay=0.0,
                               warmup_steps=max(0, min(100, FLAGS.steps - 1)), eval_every=250, eval_steps=10,
                               checkpoint_every=250, log_every=25)
    trainer, tokenizer, _ = train(LMConfig.preset("nano"), train_config, FLAGS.model_dir, strategy_name="auto")
    return trainer, tokenizer


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from tf_lm.model import TransformerLM  # loads TensorFlow: imported once the flags are good
    from tf_lm.training import TrainingInterrupted

    with reported_stops(TrainingInterrupted), one_line_errors():
        trainer, tokenizer = _train_demo()
    source = open_source(DATASET)
    vocabulary = {word for split in ("train", "validation") for chunk in source.chunks(split)
                  for word in WORD.findall(chunk.text)}
    untrained = TransformerLM(trainer.model.config)
    print(f"\nloss curve: {FLAGS.model_dir}/loss.png")
    for title, model in (("before training", untrained), (f"after {FLAGS.steps} steps", trainer.model)):
        texts = continuations(model, tokenizer)
        # Only the sampled words count: every prompt's words are in the corpus.
        print(f"\n{title} ({known_word_share(texts, vocabulary):.0%} of the sampled words occur in the corpus):")
        for prompt, text in zip(PROMPTS, texts):
            print("\n".join("  | " + line for line in (prompt + text).splitlines()))


if __name__ == "__main__":
    run_script(main)
