"""Runs on the GPU box: the train-bag, merge and encode jobs. Imports only what a stock PyTorch image
has (torch, transformers, tokenizers, safetensors, peft, fsspec, pyarrow, numpy, pyyaml); never
planner/ or pricing/."""
