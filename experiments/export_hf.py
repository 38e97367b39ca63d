"""Exports a trained model directory as a Hugging Face GPT-2 checkpoint, for PyTorch `transformers`, vLLM, llama.cpp.

    python -m experiments.export_hf --model_dir=runs/shakespeare --output_dir=runs/shakespeare-hf

Writes into --output_dir (built beside it and swapped in by rename): config.json (`GPT2LMHeadModel`),
model.safetensors (PyTorch names and layout), generation_config.json, tokenizer.json and tokenizer_config.json, and
tf_lm_export.json, which lets a later export replace it (a directory without it is never replaced, nor an earlier
export holding a file added since, such as the .gguf llama.cpp's converter writes there).
Load it with `transformers.GPT2LMHeadModel.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`, or
back here with `tf_lm.convert.from_gpt2_safetensors(OUT)`.
"""

from __future__ import annotations

from absl import flags, logging

from experiments.flags import define_trained_model_flag, flag_group, one_line_errors, run_script

FLAGS = flags.FLAGS


def export_hf(model_dir: str, output_dir: str) -> None:
    """Writes the HF GPT-2 checkpoint of `model_dir` into `output_dir`.

    Raises:
        FileNotFoundError: if `model_dir` is not a model directory.
        ValueError: if the model is not a plain GPT-2 architecture, or `output_dir` is a non-empty directory
            that no export wrote, or an earlier export that also holds other files (it is left untouched).
    """
    from tf_lm.artifacts import load_model_dir
    from tf_lm.convert import save_gpt2_checkpoint  # loads TensorFlow: imported once the flags are good

    model, tokenizer = load_model_dir(model_dir)
    save_gpt2_checkpoint(model, output_dir, tokenizer)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with one_line_errors():
        export_hf(FLAGS.model_dir, FLAGS.output_dir)
    print(f"wrote {FLAGS.output_dir}: load it with transformers.GPT2LMHeadModel.from_pretrained({FLAGS.output_dir!r})")


if __name__ == "__main__":
    with flag_group("export"):
        define_trained_model_flag()
        flags.DEFINE_string("output_dir", None, "Where the Hugging Face checkpoint is written.")
    flags.mark_flags_as_required(["model_dir", "output_dir"])
    run_script(main)
