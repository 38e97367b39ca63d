"""`make demo`: builds a nano model over the characters of CPython's pydoc topics and scores a sentence."""

from absl import app

import numpy as np
from pydoc_data import topics

from tf_lm import LMConfig, TransformerLM


def main(argv):
    del argv
    text = "".join(topics.topics.values())
    vocab = sorted(set(text))
    sentence = "The quick brown fox jumps over the lazy dog."
    ids = np.array([[vocab.index(c) for c in sentence]], dtype=np.int32)
    model = TransformerLM(LMConfig.preset("nano", vocab_size=len(vocab)))
    scores = model.score(ids)
    log_likelihood = float(scores["log_likelihood"][0])
    print(f"nano model: {model.count_params():,} parameters, vocabulary of {len(vocab)} characters")
    print(f"untrained log P({sentence!r}) = {log_likelihood:.2f} nats "
          f"({-log_likelihood / (len(sentence) - 1) / np.log(2):.3f} bits/char; uniform is {np.log2(len(vocab)):.3f})")


if __name__ == "__main__":
    app.run(main)
