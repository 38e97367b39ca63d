"""Prepares a token store: a source's token ids in shards on disk, which training then reads with flat memory.

    python -m experiments.prepare_data --dataset=text:'corpus/*.txt' --tokenizer=bpe --output_dir=stores/corpus
    python -m experiments.train_lm --dataset=store:stores/corpus --model_dir=runs/corpus --preset=gpt2

The source is streamed in bounded chunks and encoded on every core; a progress line shows MB, tokens and
tokens/s. `--tokenizer_dir` encodes with a saved tokenizer (a train_lm `--model_dir` or its `model/tokenizer/`, an
export_hf `--output_dir`, or GPT-2's `vocab.json` + `merges.txt`) instead of building one. A killed run leaves no
manifest; rerun the same command to finish the store (finished shards are kept). Rerun on a finished store, the
command reads it whole and compares each shard's checksum with the manifest's.
"""

from __future__ import annotations

import os

from absl import flags, logging

from experiments.flags import (
    bpe_sample_bytes,
    define_data_flags,
    define_tokenizer_flags,
    flag_group,
    one_line_errors,
    run_script,
    source_options,
)
from tf_lm.data import load_tokenizer, prepare_store
from tf_lm.data.store import DEFAULT_SHARD_TOKENS, MANIFEST
from tf_lm.fileio import gfile

FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with one_line_errors():
        if FLAGS.tokenizer_dir is not None:
            given = [f"--{name}" for name in ("tokenizer", "bpe_vocab_size", "bpe_sample_mb") if FLAGS[name].present]
            if given:
                raise ValueError(f"--tokenizer_dir brings its own tokenizer; drop {', '.join(given)}.")
            tokenizer = load_tokenizer(FLAGS.tokenizer_dir)
        else:
            tokenizer = FLAGS.tokenizer
        manifest = os.path.join(FLAGS.output_dir, MANIFEST)
        finished = gfile(manifest).exists(manifest)
        store = prepare_store(FLAGS.dataset, FLAGS.output_dir, tokenizer=tokenizer,
                              bpe_vocab_size=FLAGS.bpe_vocab_size, bpe_sample_bytes=bpe_sample_bytes(FLAGS),
                              shard_tokens=FLAGS.shard_tokens, progress=True, **source_options(FLAGS))
        verified = f"; {store.verify()} shard checksums verified" if finished else ""
    print(f"{store}{verified}; train with --dataset=store:{FLAGS.output_dir}")


if __name__ == "__main__":
    define_data_flags(stores=False)
    define_tokenizer_flags()
    with flag_group("data"):
        flags.DEFINE_string("tokenizer_dir", None, "Encode with the tokenizer saved in this directory (a model "
                            "directory or its model/tokenizer/, an HF checkpoint, or GPT-2's vocab.json + merges.txt) "
                            "instead of building one.")
    with flag_group("output"):
        flags.DEFINE_string("output_dir", None, "The store's directory (any tf.io.gfile path): new, empty, or an "
                            "unfinished store of the same flags (finished).")
        flags.DEFINE_integer("shard_tokens", DEFAULT_SHARD_TOKENS, "Ids per shard file (at least; a shard ends at a "
                             "chunk boundary).")
    flags.mark_flags_as_required(["output_dir"])
    run_script(main)
