"""The train-bag losses: InfoNCE and its two distillation variants, one function each (LOSSES), as
FlagEmbedding's decoder-only embedder computes them (FlagEmbedding/abc/finetune/embedder/AbsModeling.py).

Notation for one same-task batch of n queries: query i has a group G_i = its positive and up to
group_size - 1 hard negatives (jobs.data.make_group); D = every document of every group of the batch,
in gathered order (Layout); s(q, d) = cos(q, d) / T with T the temperature. Without in-batch negatives
(FlagEmbedding's `*no_in_batch_neg` datasets: Layout.in_batch False) every sum over D below is a sum
over G_i. Teacher scores t (FlagEmbedding's pos_scores/neg_scores) give w_i = softmax(t_i) over G_i.

All three take L2-normalized embeddings `q` (n x h) and `d` (|D| x h) and return the scalar loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jobs.data import Batch


@dataclass(frozen=True)
class Layout:
    """Where each query's group sits among the documents of the whole (gathered) batch."""
    starts: list[int]  # per query (rank order): index of its positive among all documents
    sizes: list[int]  # per query: its group's size
    teacher: list[tuple[float, ...]] | None  # per query, when every group has teacher scores
    in_batch: bool  # other groups' documents are negatives too


def batch_layout(batch: Batch, world: int) -> Layout:
    """Queries and documents in the order the ranks' embeddings are gathered in: rank 0's, then rank 1's..."""
    ordered = [g for rank in range(world) for g in batch.groups[rank::world]]
    starts, sizes, total = [], [], 0
    for g in ordered:
        starts.append(total)
        sizes.append(len(g.documents))
        total += len(g.documents)
    teacher = [g.teacher_scores for g in ordered] if all(g.teacher_scores for g in ordered) else None
    return Layout(starts, sizes, teacher, batch.in_batch)


def _scores(q: torch.Tensor, d: torch.Tensor, layout: Layout, temperature: float):
    """(s over D, or -inf outside G_i without in-batch negatives; the mask of G_i; each group's first column)."""
    starts = torch.tensor(layout.starts, device=q.device)
    sizes = torch.tensor(layout.sizes, device=q.device)
    columns = torch.arange(d.shape[0], device=q.device)
    own = (columns[None, :] >= starts[:, None]) & (columns[None, :] < (starts + sizes)[:, None])
    scores = q @ d.T / temperature
    return (scores if layout.in_batch else scores.masked_fill(~own, float("-inf"))), own, starts


def _teacher_weights(layout: Layout, device) -> torch.Tensor:
    """w_ij = softmax_j(t_ij) over G_i, n x max|G_i|, 0 past a group's end."""
    width = max(layout.sizes)
    raw = torch.full((len(layout.sizes), width), float("-inf"), device=device)
    for i, t in enumerate(layout.teacher):
        raw[i, :len(t)] = torch.tensor(t, device=device)
    return torch.softmax(raw, dim=-1)


def info_nce(q, d, layout: Layout, temperature: float):
    """InfoNCE with in-batch negatives (FlagEmbedding's compute_loss on the batch's scores):

        L = 1/n sum_i -log( exp(s(q_i, p_i)) / sum_{d in D} exp(s(q_i, d)) )

    p_i = G_i[0], the positive. Teacher scores, when present, are ignored."""
    scores, _, starts = _scores(q, d, layout, temperature)
    return F.cross_entropy(scores, starts)


def m3_kd(q, d, layout: Layout, temperature: float):
    """FlagEmbedding's m3_kd_loss (AbsModeling.distill_loss, BOOM's --kd_loss_type): each member of
    G_i is a target in turn, weighted by the teacher, with the group's earlier members masked out:

        L = sum_j 1/n sum_i w_ij CE_ij,
        CE_ij = -log( exp(s(q_i, G_ij)) / sum_{d in D minus G_i[0..j-1]} exp(s(q_i, d)) )

    j runs to max |G_i|; a group shorter than j contributes 0. Without teacher scores it is info_nce."""
    if layout.teacher is None:
        return info_nce(q, d, layout, temperature)
    scores, _, starts = _scores(q, d, layout, temperature)
    m = d.shape[0]
    sizes = torch.tensor(layout.sizes, device=q.device)
    columns = torch.arange(m, device=q.device)
    weights = _teacher_weights(layout, q.device)
    loss = scores.new_zeros(())
    masked = scores
    for j in range(weights.shape[1]):
        valid = j < sizes
        target = (starts + j).clamp(max=m - 1)
        ce = torch.logsumexp(masked, dim=-1) - masked.gather(1, target[:, None]).squeeze(1)
        loss = loss + (weights[:, j] * torch.where(valid, ce, torch.zeros_like(ce))).mean()
        earlier = (columns[None, :] == target[:, None]) & valid[:, None]
        masked = masked.masked_fill(earlier, float("-inf"))
    return loss


def kl_kd(q, d, layout: Layout, temperature: float):
    """FlagEmbedding's kl_div distillation: InfoNCE plus the cross-entropy of the teacher's distribution
    over each group against the student's, restricted to the group:

        L = info_nce - 1/n sum_i sum_{j in G_i} w_ij log softmax_{G_i}(s(q_i, .))_j

    Without teacher scores it is info_nce."""
    loss = info_nce(q, d, layout, temperature)
    if layout.teacher is None:
        return loss
    scores, own, starts = _scores(q, d, layout, temperature)
    sizes = torch.tensor(layout.sizes, device=q.device)
    weights = _teacher_weights(layout, q.device)
    offsets = torch.arange(weights.shape[1], device=q.device)
    index = (starts[:, None] + offsets[None, :]).clamp(max=d.shape[0] - 1)
    local = torch.gather(scores.masked_fill(~own, float("-inf")), 1, index)
    valid = offsets[None, :] < sizes[:, None]
    log_p = torch.log_softmax(local.masked_fill(~valid, float("-inf")), dim=-1)
    return loss - (weights * log_p.masked_fill(~valid, 0.0)).sum(dim=-1).mean()


LOSSES = {"none": info_nce, "m3": m3_kd, "kl": kl_kd}  # by train-bag's --kd-loss
