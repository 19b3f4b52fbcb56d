"""The embedding model, one implementation for training and encoding.

Qwen3 embedders (Qwen3-Embedding, BOOM) read the hidden state of the last token: the tokenizer
appends an end-of-text token to every input, batches are left-padded so that token sits in the last
position, and the embedding is that hidden state L2-normalized. Queries carry the instruction prompt
(jobs.prompt); documents carry none. The saved output directory holds the
sentence-transformers module files so `SentenceTransformer(path).encode(x, prompt_name="query")`
reproduces exactly what `embed()` computes here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from jobs.prompt import DEFAULT_INSTRUCTION, query_prompt

END_OF_TEXT = "<|endoftext|>"


def appended_token(tokenizer) -> str:
    """The token every input ends with: Qwen's <|endoftext|> when the vocabulary has it, else EOS."""
    if tokenizer.convert_tokens_to_ids(END_OF_TEXT) not in (None, tokenizer.unk_token_id):
        return END_OF_TEXT
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has neither <|endoftext|> nor an EOS token to pool on")
    return tokenizer.eos_token


def load_tokenizer(model: str | Path, *, local_files_only: bool = False):
    """A left-padding fast tokenizer that appends the pooled token to every input.

    Installs the append as the tokenizer's post-processor, so a tokenizer saved from here behaves
    the same inside sentence-transformers, which tokenizes with plain `tokenizer(texts)`.
    """
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=local_files_only)
    if not tokenizer.is_fast:
        raise ValueError(f"{model}: a fast tokenizer (tokenizer.json) is required")
    tokenizer.padding_side = "left"
    token = appended_token(tokenizer)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = token
    probe = tokenizer("probe")["input_ids"]
    if not probe or probe[-1] != token_id:
        tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {token}:0", pair=f"$A:0 {token}:0 $B:1 {token}:1", special_tokens=[(token, token_id)]
        )
    return tokenizer


def pick_device_dtype(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU, fp32 on the CPU (bf16 matmuls on CPU are slow and lossy)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def attention_implementation(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_model(model: str | Path, *, device: torch.device, dtype: torch.dtype, local_files_only: bool = False,
               **kwargs):
    from transformers import AutoModel

    net = AutoModel.from_pretrained(
        str(model), dtype=dtype, attn_implementation=attention_implementation(device),
        local_files_only=local_files_only, **kwargs,
    )
    return net.to(device)


def tokenize(tokenizer, texts: list[str], max_length: int):
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token (works for left or right padding)."""
    if bool(attention_mask[:, -1].all()):
        return hidden[:, -1]
    lengths = attention_mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths]


def embed(model, batch) -> torch.Tensor:
    """L2-normalized last-token embeddings in float32 for a tokenized batch on the model's device."""
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.normalize(last_token_pool(hidden, batch["attention_mask"]).float(), p=2, dim=-1)


def truncate_dim(embeddings: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Matryoshka truncation to the first `dim` components, renormalized."""
    if dim is None or dim >= embeddings.shape[-1]:
        return embeddings
    return F.normalize(embeddings[..., :dim], p=2, dim=-1)


def write_sentence_transformers_files(output: Path, *, hidden_size: int, max_seq_length: int,
                                      instruction: str = DEFAULT_INSTRUCTION) -> None:
    """The module files that make `output` load in sentence-transformers with our pooling and prompts."""
    output = Path(output)
    (output / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (output / "2_Normalize").mkdir(parents=True, exist_ok=True)
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": {"query": query_prompt(instruction), "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
        "2_Normalize/config.json": {},
    }
    for name, content in files.items():
        (output / name).write_text(json.dumps(content, indent=2) + "\n")
