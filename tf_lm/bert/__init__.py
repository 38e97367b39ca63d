"""Fine-tuning Hugging Face BERT (`TFBertForSequenceClassification`) for text classification.

`tf_lm.bert.hub` (a package: loading, optimizer, saving) is the only part that imports `transformers` (and with it
`tf_keras`); `data` and `finetune` use TensorFlow and numpy and take the model, tokenizer and optimizer as arguments.
Nothing here is imported by `import tf_lm`, so language-model users never load transformers (which sets
`TF_USE_LEGACY_KERAS=1` when imported).
"""
