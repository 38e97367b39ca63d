"""Exports a trained model directory as a servable SavedModel with a text-in, text-out `generate` signature.

    python -m experiments.export --model_dir=runs/shakespeare --export_dir=exports/shakespeare

The sampler and the context policy are fixed at export time by the same flags as `experiments.generate`
(default greedy, sliding past the context), and so is a draft model (--draft_model_dir) or drafter. Unlike
`experiments.generate`'s, --temperature has no default: unset, the export is greedy, or samples at temperature 1
with --top_k or --top_p. Loading needs only TensorFlow:

    m = tf.saved_model.load("exports/shakespeare")
    m.generate(prompt=tf.constant(["ROMEO:"]), max_new_tokens=tf.constant(100), seed=tf.constant(0, tf.int64))
"""

from __future__ import annotations

from absl import flags, logging

from experiments.flags import define_trained_model_flag, flag_group, one_line_errors, run_script
from experiments.generate import (
    define_sampling_flags,
    define_speculative_flags,
    sampling_kwargs,
    speculative_kwargs,
    stop_token_ids,
)

FLAGS = flags.FLAGS


def define_export_flags() -> None:
    with flag_group("export"):
        define_trained_model_flag()
        flags.DEFINE_string("export_dir", None, "Where to write the SavedModel: a new or empty directory, or an "
                            "earlier export (replaced once the new one is complete).")
    define_sampling_flags(default_temperature=None)
    define_speculative_flags()


def run(model_dir: str, export_dir: str, sampling: dict, context_policy: str = "slide",
        draft_model_dir: str | None = None, drafter: str | None = None,
        num_speculative_tokens: int | None = None) -> None:
    """Loads `model_dir` and writes its SavedModel to `export_dir`.

    Raises:
        FileNotFoundError: if `model_dir` is not a model directory.
        ValueError: for a tokenizer that cannot be exported, bad sampler settings, or an `export_dir` that is
            neither new, empty nor an earlier export.
    """
    from tf_lm.artifacts import load_model_dir
    from tf_lm.fileio import EXPORT_MARKER, check_replaceable
    from tf_lm.generation.export import EXPORT_KIND, export_saved_model

    check_replaceable(export_dir, EXPORT_MARKER, EXPORT_KIND)  # before the slow load: a wrong path fails at once
    model, tokenizer = load_model_dir(model_dir)
    speculation = speculative_kwargs(tokenizer, draft_model_dir, drafter, num_speculative_tokens)
    export_saved_model(model, tokenizer, export_dir, stop_token_ids=stop_token_ids(tokenizer),
                       context_policy=context_policy, **sampling, **speculation)
    print(f"Wrote a SavedModel with a 'generate' signature to {export_dir}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer logs INFO lines (signatures, fingerprint)
    with one_line_errors():
        run(FLAGS.model_dir, FLAGS.export_dir, sampling_kwargs(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p),
            FLAGS.context_policy, FLAGS.draft_model_dir, FLAGS.drafter, FLAGS.num_speculative_tokens)


if __name__ == "__main__":
    define_export_flags()
    flags.mark_flags_as_required(["model_dir", "export_dir"])
    run_script(main)
