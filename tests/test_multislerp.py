"""Multi-SLERP against a literal float64 walk through its steps, and its defining properties."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.multislerp import BLOCK, multislerp

SHAPES = [(7,), (16, 5), (3, 4, 6), (BLOCK + 37,)]  # the last spans two blocks
weights_strategy = st.floats(min_value=0.05, max_value=20.0)


def reference(tensors, weights, base=None, normalize_weights=True, eps=1e-8):
    """mergekit's recipe step by step in float64: unit vectors, tangent projection, exponential map."""
    x = torch.stack([t.double().flatten() for t in tensors])
    origin = None if base is None else base.double().flatten()
    if origin is not None:
        x = x - origin
    w = torch.tensor(weights, dtype=torch.float64)
    if normalize_weights:
        w = w / w.sum()
    norms = x.norm(dim=1)
    unit = x / (norms + eps)[:, None]
    mean = (w[:, None] * unit).sum(0)
    mean = mean / mean.norm()
    tangent = unit - (unit @ mean)[:, None] * mean
    step = (w[:, None] * tangent).sum(0)
    length = step.norm() + eps
    on_sphere = mean * torch.cos(length) + step * (torch.sin(length) / length)
    out = on_sphere * (w @ norms)
    if origin is not None:
        out = out + origin
    return out.view(tensors[0].shape)


def random_tensors(seed: int, count: int, shape, base: bool = False):
    generator = torch.Generator().manual_seed(seed)
    origin = torch.randn(shape, generator=generator) if base else None
    tensors = [(0 if origin is None else origin) + torch.randn(shape, generator=generator) for _ in range(count)]
    return tensors, origin


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-6) -> None:
    scale = max(1.0, expected.abs().max().item())
    assert actual.dtype == torch.float32
    assert (actual.double() - expected.double()).abs().max().item() <= tolerance * scale


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES), base=st.booleans(), normalize=st.booleans(),
       weights=st.lists(weights_strategy, min_size=2, max_size=5))
def test_matches_the_step_by_step_reference(seed, shape, base, normalize, weights):
    tensors, origin = random_tensors(seed, len(weights), shape, base)
    assert_close(multislerp(tensors, weights, origin, normalize_weights=normalize),
                 reference(tensors, weights, origin, normalize_weights=normalize))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES),
       weights=st.lists(weights_strategy, min_size=1, max_size=5))
def test_merging_identical_tensors_returns_the_tensor(seed, shape, weights):
    tensor = random_tensors(seed, 1, shape)[0][0]
    assert_close(multislerp([tensor] * len(weights), weights), tensor)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES), base=st.booleans(),
       weights=st.lists(weights_strategy, min_size=2, max_size=5), data=st.data())
def test_order_of_model_weight_pairs_does_not_matter(seed, shape, base, weights, data):
    tensors, origin = random_tensors(seed, len(weights), shape, base)
    order = data.draw(st.permutations(range(len(weights))))
    # Both sides are float32 sums taken in different orders, so allow a few float32 ulps more.
    assert_close(multislerp([tensors[i] for i in order], [weights[i] for i in order], origin),
                 multislerp(tensors, weights, origin).double(), tolerance=2e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES),
       weights=st.lists(weights_strategy, min_size=2, max_size=5), factor=st.floats(1e-3, 1e3))
def test_scaling_all_weights_does_not_matter_when_normalizing(seed, shape, weights, factor):
    tensors, _ = random_tensors(seed, len(weights), shape)
    assert_close(multislerp(tensors, [w * factor for w in weights]), multislerp(tensors, weights).double())


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Textbook slerp between unit vectors a and b."""
    theta = math.acos(float(a @ b))
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES), first=weights_strategy, second=weights_strategy)
def test_two_models_lie_on_the_great_circle_between_them(seed, shape, first, second):
    (x, y), _ = random_tensors(seed, 2, shape)
    a, b = x.double().flatten(), y.double().flatten()
    a_unit, b_unit = a / a.norm(), b / b.norm()
    w0, w1 = first / (first + second), second / (first + second)
    theta = math.acos(float(a_unit @ b_unit))
    # the point between them with w0 sin(angle to a) = w1 sin(angle to b): the normalized weighted mean
    t = math.atan2(w1 * math.sin(theta), w0 + w1 * math.cos(theta)) / theta
    expected = slerp(a_unit, b_unit, t) * (w0 * a.norm() + w1 * b.norm())
    assert 0 <= t <= 1
    assert_close(multislerp([x, y], [first, second]), expected.view(shape))


def test_equal_weights_give_the_slerp_midpoint():
    (x, y), _ = random_tensors(3, 2, (40, 3))
    a, b = x.double().flatten(), y.double().flatten()
    midpoint = slerp(a / a.norm(), b / b.norm(), 0.5) * (a.norm() + b.norm()) / 2
    assert_close(multislerp([x, y], [1.5, 1.5]), midpoint.view(x.shape))


def test_antipodal_pair_falls_back_to_linear_interpolation():
    x = torch.randn(50, generator=torch.Generator().manual_seed(1))
    assert_close(multislerp([x, -2 * x], [1.0, 1.0]), (0.5 * x - x).double())


def test_cancelling_directions_of_more_models_are_an_error_not_nans():
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    with pytest.raises(ValueError, match="cancel"):
        multislerp([e1, -e1, e2, -e2], [1.0, 1.0, 1.0, 1.0])


def test_models_equal_to_the_base_merge_to_the_base():
    base = torch.randn(9, 4)
    assert torch.equal(multislerp([base.clone() for _ in range(3)], [0.2, 0.4, 0.6], base), base)


def test_one_model_is_returned_as_it_is_whatever_its_weight():
    x = torch.randn(5, 5)
    assert torch.equal(multislerp([x], [7.0]), x)


def test_low_precision_inputs_are_merged_in_float32():
    tensors, origin = random_tensors(5, 3, (33, 8), base=True)
    low = [t.to(torch.bfloat16) for t in tensors]
    merged = multislerp(low, [0.2, 0.4, 0.6], origin.to(torch.bfloat16))
    assert torch.equal(merged, multislerp([t.float() for t in low], [0.2, 0.4, 0.6], origin.to(torch.bfloat16).float()))


@pytest.mark.parametrize(("tensors", "weights"), [
    ([torch.zeros(3), torch.zeros(4)], [1.0, 1.0]),
    ([torch.zeros(3), torch.zeros(3)], [1.0]),
    ([], []),
])
def test_mismatched_inputs_are_rejected(tensors, weights):
    with pytest.raises(ValueError):
        multislerp(tensors, weights)
