"""Multi-SLERP: the weighted mean of several tensors on the hypersphere, as mergekit's `multislerp`.

Each tensor is flattened to a vector (1-D tensors too, with no special case). With inputs x_i,
optional base b, weights w_i (divided by their sum when `normalize_weights`):

    v_i = x_i - b  (or x_i without a base)       task vectors
    n_i = |v_i|,   u_i = v_i / (n_i + eps)        unit directions
    m   = sum_i w_i u_i,   mu = m / |m|           weighted mean direction
    t_i = u_i - <u_i, mu> mu                      projection onto the tangent space at mu
    T   = sum_i w_i t_i                           weighted tangent sum
    y   = cos|T| mu + sin|T| T / |T|              exponential map back to the sphere
    out = (sum_i w_i n_i) y  (+ b)                scaled by the weighted mean norm

Because <m, mu> = |m|, the tangent sum is T = m - |m| mu = 0 exactly and y = mu: the result is the
normalized weighted mean direction times the weighted mean norm, a fixed linear combination

    out = b + sum_i c_i v_i,   c_i = (sum_j w_j n_j) w_i / ((n_i + eps) |m|),

with |m|^2 = a^T G a for a_i = w_i / (n_i + eps) and G the Gram matrix <v_i, v_j>. That closed form
is what we compute: one pass for G, one for the combination, in cache-sized blocks, with no
k x N temporaries. mergekit walks the steps literally in its load dtype: run in float64 it agrees
with this to float32 rounding; run in float32 its whole-tensor reductions lose digits on large
tensors and its T is rounding noise rather than 0 (about 4e-3 off on a 155 M-element embedding).

Limits:
- It is one barycentric step from the Euclidean mean, not the iterated Karcher mean. For two
  inputs the result lies on the great-circle arc between them where w_0 sin(phi_0) = w_1 sin(phi_1)
  (phi_i: angle to input i); that is slerp's point only for equal weights.
- If the directions cancel (|m| < eps): two inputs fall back to the linear interpolation
  w_0 v_0 + w_1 v_1 (+ b), as mergekit does; more inputs raise ValueError rather than return NaNs.
  If every v_i is zero the weighted mean norm is zero and so is the merge (out = b), where
  mergekit would raise for three or more inputs.
- One input is returned as it is, whatever its weight (mergekit's convention).

Numerics: blocks are upcast to float32, block Gram matrices are summed in float64, the k x k
coefficient algebra runs in float64, and the result is float32 whatever the input dtype.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

BLOCK = 1 << 16  # elements per input row in a block: k rows of float32 stay in the CPU cache


def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor | None = None, *,
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Merge same-shaped `tensors` with `weights` (optionally as task vectors from `base`); float32."""
    if not tensors or len(tensors) != len(weights):
        raise ValueError(f"need one weight per tensor, got {len(tensors)} tensors and {len(weights)} weights")
    shape = tensors[0].shape
    for tensor in (*tensors, *([] if base is None else [base])):
        if tensor.shape != shape:
            raise ValueError(f"shapes differ: {tuple(shape)} and {tuple(tensor.shape)}")
    if len(tensors) == 1:
        return tensors[0].to(torch.float32, copy=True)

    w = torch.tensor(weights, dtype=torch.float64)
    if normalize_weights:
        w = w / w.sum()
    rows = [t.reshape(-1) for t in tensors]
    origin = None if base is None else base.reshape(-1)

    gram = torch.zeros(len(rows), len(rows), dtype=torch.float64)
    for _, block in _blocks(rows, origin):
        gram += (block @ block.T).double()
    coefficients = _coefficients(gram, w, eps).to(torch.float32)

    merged = torch.empty(shape.numel(), dtype=torch.float32)
    for span, block in _blocks(rows, origin):
        torch.mv(block.T, coefficients, out=merged[span])
        if origin is not None:
            merged[span] += origin[span]
    return merged.view(shape)


def _coefficients(gram: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """c with out = b + sum_i c_i v_i, from the Gram matrix of the task vectors (see the module doc)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    mean_norm = float(w @ norms)
    if mean_norm == 0.0:  # every task vector is zero: so is their mean
        return torch.zeros_like(w)
    a = w / (norms + eps)
    direction_norm = math.sqrt(max(float(a @ gram @ a), 0.0))
    if direction_norm < eps:
        if len(w) == 2:  # antipodal pair: no unique great circle, interpolate linearly
            return w
        raise ValueError("the weighted mean direction is zero: the inputs' directions cancel out "
                         "(e.g. v and -v with equal weights); change the weights")
    return a * (mean_norm / direction_norm)


def _blocks(rows: list[torch.Tensor], origin: torch.Tensor | None) -> Iterator[tuple[slice, torch.Tensor]]:
    """(span, k x len(span) float32 block of the task vectors), reusing one buffer: do not keep blocks."""
    numel = rows[0].numel()
    buffer = torch.empty(len(rows), min(BLOCK, numel), dtype=torch.float32)
    for start in range(0, numel, BLOCK):
        span = slice(start, min(start + BLOCK, numel))
        block = buffer[:, : span.stop - start]
        for row, source in zip(block, rows):
            row.copy_(source[span])
        if origin is not None:
            block -= origin[span]
        yield span, block
