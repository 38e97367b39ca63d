"""The boundary with Hugging Face: the only part of `tf_lm.bert` that imports `transformers` (and so `tf_keras`).

Everything here returns tf_keras objects (models, optimizers, schedules): Keras 3 and tf_keras objects do not
mix, so the rest of `tf_lm.bert` only calls them and never builds Keras 3 pieces around them. One module per
concern: `loading` (models, tokenizers and what the loop asks of a model), `optimizer` (transformers' AdamW) and
`saving` (Hugging Face checkpoints); which checkpoint a model name means is `tf_lm.bert.checkpoint`'s job, which
needs no transformers. `tests/test_bert_hub.py` checks that no other module of `tf_lm.bert` imports them.
"""

from tf_lm.bert.checkpoint import resolve_checkpoint
from tf_lm.bert.hub.loading import (
    head_variables,
    label_names,
    load_classifier,
    load_tokenizer,
    position_limit,
    set_seed,
)
from tf_lm.bert.hub.optimizer import create_optimizer
from tf_lm.bert.hub.saving import export_tf_checkpoint, save_pretrained

__all__ = [
    "create_optimizer", "export_tf_checkpoint", "head_variables", "label_names", "load_classifier", "load_tokenizer",
    "position_limit", "resolve_checkpoint", "save_pretrained", "set_seed",
]
