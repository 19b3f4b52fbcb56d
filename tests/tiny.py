"""Test-side names for the toy model and corpus builders, which live in jobs.toy (the demo uses them too)."""
from jobs.toy import WORDS, build_tiny_model, tiny_config, train_tokenizer, write_toy_corpus  # noqa: F401
