"""Gradient caching: the gradient of a loss over a whole batch of embeddings with the memory of one chunk.

GradCache (Gao et al. 2021, arXiv 2101.06983); sentence-transformers' CachedMultipleNegativesRankingLoss is
the reference implementation. With texts in parts (queries, documents), a chunk size m and a loss
L(E_1, ..., E_k) over the parts' embeddings:
  (1) every chunk of m sequences is embedded without a graph, the RNG state saved before each;
  (2) L and dL/dE are computed over the whole batch;
  (3) each chunk is embedded again with a graph, its RNG state restored (dropout masks repeat), and
      back-propagated with its rows of dL/dE.
Summed over chunks this is dL/dtheta, exactly as one pass over the whole batch would give it.

Each part's sequences are sorted by token length (longest first) before they are cut into chunks, so a
chunk pads to its own longest sequence, not the batch's: padding is compute spent on nothing. A
left-padded decoder embeds a sequence the same at any padding width up to rounding (RoPE scores depend
on relative positions only), so the sort changes the gradient only by rounding (tests/test_gradcache.py).
Both passes use the same chunks. Nothing here knows the training config: plain numbers in.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from jobs.embedder import embed, tokenize


@dataclass(frozen=True)
class Chunks:
    """One part's texts, tokenized in chunks of similar length."""
    inputs: list[dict]  # tokenized chunks (left-padded), longest sequences first
    order: list[int]  # row k of the concatenated chunks is text order[k]
    tokens: int  # real (attention-mask) tokens
    padded_tokens: int  # what the forward computes: rows x width, summed over chunks

    def restore(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows in chunk order -> rows in the texts' order."""
        inverse = torch.empty(len(self.order), dtype=torch.long)
        inverse[torch.tensor(self.order, dtype=torch.long)] = torch.arange(len(self.order))
        return rows[inverse.to(rows.device)]


def tokenize_sorted(tokenizer, texts: list[str], max_length: int, chunk: int, device) -> Chunks:
    """`texts` sorted by token length (stable: ties keep their order) and tokenized in chunks of `chunk`
    sequences (0: one chunk of all)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    size = chunk or len(texts)
    inputs = [tokenize(tokenizer, [texts[i] for i in order[k:k + size]], max_length).to(device)
              for k in range(0, len(order), size)]
    return Chunks(inputs, order, sum(lengths), sum(int(x["input_ids"].numel()) for x in inputs))


class ReplayRNG:
    """Snapshot the RNG before a chunk's first pass; replay it for the second (RandContext in the reference)."""

    def __init__(self, device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[self.device] if self.cuda is not None else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def backward(net, parts: list[Chunks], loss_fn: Callable[..., torch.Tensor], scale: float, device,
             after_backward: Callable[[], None] = lambda: None) -> tuple[float, bool]:
    """Accumulate `scale` x d loss_fn(*embeddings of parts, in the texts' order) / d theta into the
    parameters' .grad. `after_backward` runs after every backward call (e.g. moving .grad into a float32
    sum). Returns (the loss, whether it was cached: some part had more than one chunk)."""
    if all(len(part.inputs) == 1 for part in parts):
        loss = loss_fn(*(part.restore(embed(net, part.inputs[0])) for part in parts))
        (loss * scale).backward()
        after_backward()
        return loss.item(), False
    replays, embedded = [], []
    with torch.no_grad():
        for part in parts:
            replays.append([])
            rows = []
            for piece in part.inputs:
                replays[-1].append(ReplayRNG(device))
                rows.append(embed(net, piece))
            embedded.append(torch.cat(rows).requires_grad_())
    loss = loss_fn(*(part.restore(rows) for part, rows in zip(parts, embedded)))
    (loss * scale).backward()
    after_backward()
    for part, rows, part_replays in zip(parts, embedded, replays):
        grads = rows.grad.split([int(piece["input_ids"].shape[0]) for piece in part.inputs])
        for piece, replay, grad in zip(part.inputs, part_replays, grads):
            with replay:
                embed(net, piece).backward(grad)
            after_backward()
    return loss.item(), True
