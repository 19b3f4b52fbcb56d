"""A toy world for demos and tests: a tiny random Qwen3 embedder with a tokenizer trained on the fly,
and a small learnable multi-task retrieval corpus. Real loading code, no model hub.

    python -m jobs.toy --model DIR --corpus FILE.jsonl [--eval FILE.jsonl]
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "cat dog bird fish horse cow sheep goat mouse lion tiger bear wolf fox deer rabbit "
    "red blue green yellow black white orange purple pink brown gray gold silver "
    "run jump swim fly walk climb sleep eat drink read write sing dance play cook "
    "apple bread cheese rice soup cake milk tea coffee water juice salt sugar honey "
    "python java ruby rust code bug test build deploy server client query index search "
    "paris london tokyo rome berlin madrid cairo lima oslo vienna prague dublin"
).split()


def train_tokenizer(path: Path, vocab_size: int = 400) -> None:
    """A byte-level BPE tokenizer with Qwen's special tokens, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    sentences += ["Instruct: Given a query, retrieve relevant passages\nQuery: what is it?"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")
    fast.save_pretrained(str(path))


def tiny_config(vocab_size: int = 400, **overrides):
    from transformers import Qwen3Config

    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0)
    fields.update(overrides)
    return Qwen3Config(**fields)


def build_tiny_model(path: Path, seed: int = 0, *, causal_lm: bool = False, **config_overrides) -> Path:
    """Save a random tiny Qwen3 (Qwen3Model, or Qwen3ForCausalLM like a hub base) in sentence-transformers form."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from jobs.embedder import load_tokenizer, write_sentence_transformers_files

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    train_tokenizer(path)
    load_tokenizer(path).save_pretrained(str(path))  # as an embedder ships it: left padding, EOS appended
    config = tiny_config(**config_overrides)
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if causal_lm else AutoModel).from_config(config)
    model.save_pretrained(str(path), safe_serialization=True)
    write_sentence_transformers_files(path, hidden_size=config.hidden_size, max_seq_length=128)
    return path


def write_toy_corpus(path: Path, n_per_task: int = 24, seed: int = 0) -> Path:
    """A learnable multi-task retrieval set: a query's positive shares its key word, negatives do not."""
    rng = random.Random(seed)
    tasks = {
        "animals": ("Given an animal, find a passage about it", WORDS[:16]),
        "food": ("Given a food, retrieve a passage mentioning it", WORDS[43:57]),
        "cities": ("Given a city, retrieve a passage about it", WORDS[-12:]),
    }
    lines = []
    for task, (instruction, keys) in tasks.items():
        for i in range(n_per_task):
            key = keys[i % len(keys)]
            others = [w for w in keys if w != key]
            filler = lambda: " ".join(rng.choice(WORDS[16:43]) for _ in range(5))  # noqa: E731
            lines.append({
                "query": f"{key} {rng.choice(WORDS[29:43])}",
                "positive": f"{filler()} {key} {filler()}",
                "negatives": [f"{filler()} {rng.choice(others)} {filler()}"],
                "task": task,
                "instruction": instruction,
            })
    path = Path(path)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jobs.toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="write a tiny random Qwen3 embedder here")
    parser.add_argument("--corpus", type=Path, help="write a toy multi-task training corpus here")
    parser.add_argument("--eval", type=Path, help="write a held-out evaluation set here")
    parser.add_argument("--per-task", type=int, default=24, help="records per task in the corpus")
    args = parser.parse_args(argv)
    if args.model:
        build_tiny_model(args.model)
    if args.corpus:
        write_toy_corpus(args.corpus, n_per_task=args.per_task, seed=0)
    if args.eval:
        write_toy_corpus(args.eval, n_per_task=max(8, args.per_task // 3), seed=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
