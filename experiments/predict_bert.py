"""Classifies sentences with a fine-tuned model directory (from `experiments.finetune_bert`, either backend).

    python -m experiments.predict_bert --model_dir=runs/sst2/best "a gorgeous, witty film" "a dull mess"

Prints one line per sentence: the predicted label, its probability and the sentence, tab-separated.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from experiments.flags import flag_group, one_line_errors, run_script

FLAGS = flags.FLAGS
# For a model directory that does not record its fine-tuning length (finetune_bert's default), cut to a model's
# positions when it has fewer.
DEFAULT_MAX_LENGTH = 128


def define_predict_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    with flag_group("prediction", flag_values):
        flags.DEFINE_string("model_dir", None, "A fine-tuned model directory (<output_dir>/best of finetune_bert).",
                            flag_values=flag_values)
        flags.DEFINE_integer(
            "max_length", None, "Longer sentences are cut to this many tokens. Default: the max_length the model "
            "was fine-tuned at (recorded in <model_dir>/finetune_config.json), else 128, or the model's positions "
            "if it has fewer.", flag_values=flag_values)


def run(model_dir: str, sentences: list[str], max_length: int | None = None, out=sys.stdout) -> None:
    """Loads `model_dir` and writes `label<TAB>probability<TAB>sentence` per sentence to `out`.

    Args:
        model_dir: str. A fine-tuned model directory (`<output_dir>/best` of `experiments.finetune_bert`).
        sentences: list of str. What to classify.
        max_length: int, default None: the `max_length` the model was fine-tuned at (its
            `finetune_config.json`), else 128, or the model's positions if it has fewer. Longer sentences are cut
            to this many tokens.
        out: text stream, default stdout.

    Raises:
        FileNotFoundError: if `model_dir` is not a model directory.
        ValueError: if no sentence is given, `max_length` (given, or recorded in `finetune_config.json`) exceeds
            the model's positions, `model_dir` holds another kind of model or a checkpoint without its classifier
            (a bare encoder), or a file of it is damaged.
    """
    if not sentences:
        raise ValueError('Pass the sentences to classify as arguments: predict_bert --model_dir=DIR "a sentence".')
    from tf_lm.fileio import gfile

    if not gfile(model_dir).isdir(model_dir):
        raise FileNotFoundError(f"No model directory at {model_dir!r}; train one with experiments.finetune_bert.")
    from tf_lm.bert.finetune import FINETUNE_CONFIG_FILE, classify, fine_tuned_max_length, load_for_prediction
    from tf_lm.bert.tokenizer import WordPieceTokenizer

    model = load_for_prediction(model_dir)
    limit = model.config.max_position_embeddings
    if max_length is None:
        # Read sentences as in fine-tuning: past that length the model meets positions it was never tuned on.
        recorded = fine_tuned_max_length(model_dir)
        if recorded is not None and recorded > limit:  # fine-tuning refuses a max_length beyond the positions
            raise ValueError(f"{os.path.join(model_dir, FINETUNE_CONFIG_FILE)} records max_length {recorded}, beyond "
                             f"the model's {limit} positions, so it does not belong to this model; restore it, or "
                             "pass --max_length.")
        # Not `max_length`'s fault when the model has fewer positions: the user did not pass it.
        max_length = recorded or min(DEFAULT_MAX_LENGTH, limit)
    if not 2 <= max_length <= limit:
        raise ValueError(f"--max_length must lie in [2, {limit}]. Received: --max_length={max_length}")
    names = model.config.labels
    predictions, probabilities = classify(model, WordPieceTokenizer(model_dir), sentences, max_length)
    for sentence, label, probability in zip(sentences, predictions, probabilities):
        out.write(f"{names[label]}\t{probability:.4f}\t{sentence}\n")


def main(argv):
    with one_line_errors():
        run(FLAGS.model_dir, argv[1:], FLAGS.max_length)


if __name__ == "__main__":
    define_predict_flags()
    flags.mark_flags_as_required(["model_dir"])
    run_script(main, takes_arguments=True)  # the sentences to classify
