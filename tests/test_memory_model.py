"""The planner's memory model against what torch really keeps (issue 23).

The planner may not import torch, so its constants (planner.plan.estimate SAVED_PER_LAYER,
CHECKPOINTED_LAYER, ENCODE_PEAK) are coefficients of a Qwen3 layer's widths; these tests count the
real tensors of a bf16 Qwen3 at two small widths with different ratios (intermediate / hidden, heads,
kv heads, head_dim), so a change in transformers, peft or the recipe that moves the count fails here.

Training: the tensors autograd saves for backward (torch.autograd.graph.saved_tensors_hooks), each
storage once, parameters excluded; one layer's share is the 2-layer count minus the 1-layer count
(embeddings and the final norm cancel), and its second layer is a middle one (its input needs a grad).
Encode: the peak of live tensors in a no-grad forward, tracked op by op (TorchDispatchMode).
"""
from __future__ import annotations

import weakref

import pytest

torch = pytest.importorskip("torch")

from jobs import recipe  # noqa: E402
from planner.plan import estimate  # noqa: E402
from planner.plan.estimate import CHECKPOINTED_LAYER, ENCODE_PEAK, SAVED_PER_LAYER, ModelShape  # noqa: E402

# (hidden, intermediate, heads, kv heads, head_dim): Qwen3-like ratios, small enough for a CPU
WIDTHS = [(96, 352, 6, 2, 16), (128, 480, 4, 1, 40)]


def shape_of(hidden, intermediate, heads, kv_heads, head_dim) -> ModelShape:
    return ModelShape("count", 128, hidden, intermediate, 2, heads, kv_heads, head_dim)


def qwen3(widths, layers: int, *, method: str | None = None, checkpointing: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3Model

    hidden, intermediate, heads, kv_heads, head_dim = widths
    torch.manual_seed(0)
    net = Qwen3Model(Qwen3Config(vocab_size=128, hidden_size=hidden, intermediate_size=intermediate,
                                 num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                 head_dim=head_dim, attn_implementation="sdpa", use_cache=False)).to(torch.bfloat16)
    if checkpointing:  # as jobs.train_bag.load_trainable sets it up
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method == "lora":
            net.enable_input_require_grads()
    if method == "lora":
        net = get_peft_model(net, LoraConfig(**recipe.LORA))  # adapters in float32, as the job trains them
    return net


def saved_bytes(widths, layers: int, method: str, tokens: int, *, checkpointing: bool = False) -> int:
    net = qwen3(widths, layers, method=method, checkpointing=checkpointing).train()
    parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 128, (2, tokens // 2))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(input_ids=ids, attention_mask=torch.ones_like(ids))
    return sum(saved.values())


def per_layer_per_token(widths, method: str, *, checkpointing: bool = False, tokens: int = 64) -> float:
    two = saved_bytes(widths, 2, method, tokens, checkpointing=checkpointing)
    return (two - saved_bytes(widths, 1, method, tokens, checkpointing=checkpointing)) / tokens


@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_saved_activations_per_layer_match_the_planners_coefficients(widths, method):
    counted = per_layer_per_token(widths, method)
    planned = SAVED_PER_LAYER[method].of(shape_of(*widths), recipe.LORA["r"], len(recipe.LORA_TARGETS))
    assert counted == planned


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_keeps_each_layers_bf16_input(method):
    widths = WIDTHS[0]
    assert per_layer_per_token(widths, method, checkpointing=True) == CHECKPOINTED_LAYER.of(shape_of(*widths))


def test_the_count_is_linear_in_tokens():
    """No tokens x tokens term (SDPA keeps its logsumexp, not the attention matrix): the planner's
    per-token coefficients hold at any sequence length."""
    widths = WIDTHS[1]
    assert per_layer_per_token(widths, "lora", tokens=32) == per_layer_per_token(widths, "lora", tokens=128)


class LiveBytes:
    """The peak of live tensor bytes during the ops run under it, parameters and buffers excluded."""

    def __init__(self, excluded: set[int]):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.peak, self.storages = 0, {}  # data_ptr -> (bytes, weak references to the tensors on it)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    if isinstance(tensor, torch.Tensor):
                        tracker.add(tensor, excluded)
                tracker.peak = max(tracker.peak, tracker.live())
                return out

        self.mode = Mode()

    def add(self, tensor, excluded: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in excluded or not storage.nbytes():
            return
        entry = self.storages.get(key)
        if entry is None or not any(ref() is not None for ref in entry[1]):  # a freed block's address reused
            entry = self.storages[key] = (storage.nbytes(), [])
        entry[1].append(weakref.ref(tensor))

    def live(self) -> int:
        return sum(size for size, refs in self.storages.values() if any(ref() is not None for ref in refs))


@pytest.mark.parametrize("widths", WIDTHS)
def test_encode_peak_matches_the_planners_coefficients(widths):
    net = qwen3(widths, 2).eval()
    excluded = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    tracker = LiveBytes(excluded)
    tokens = 96
    with torch.no_grad(), tracker.mode:  # the tokenized batch counts: the job holds it through the forward
        ids = torch.randint(0, 128, (1, tokens))  # one sequence: the rotary tables count once per token
        net(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert tracker.peak == ENCODE_PEAK.of(shape_of(*widths)) * tokens


def test_the_4b_lora_bag_at_chunk_32_needs_more_than_16_gb():
    """The issue's numbers: Qwen3-4B, BOOM LoRA r32, 32 sequences of 512 tokens per chunk."""
    shape = estimate.QWEN3["Qwen/Qwen3-4B"]
    assert SAVED_PER_LAYER["lora"].of(shape, 32, 7) / shape.hidden == pytest.approx(130.5, abs=0.1)
    assert SAVED_PER_LAYER["full"].of(shape) / shape.hidden == pytest.approx(66.5, abs=0.1)
    stats = estimate.CorpusStats(1_000_000, 1088.0, 7.0, measured=False)
    needs = estimate.train_needs(shape, stats, fraction=0.4)
    assert needs.vram_at(32) > 16 + 2
    assert needs.mini_batch_on(16) < 32 and needs.vram_at(needs.mini_batch_on(16)) <= 16
    assert needs.mini_batch_on(24) == 32


def test_the_merge_peak_matches_the_planners_copies_of_the_largest_tensor(tiny_model_dir, tmp_path, monkeypatch):
    """Merge: the peak of live tensors in `python -m jobs.merge` (each input's tensor as it is read, tracked from
    InputModel.read, and every tensor the merge computes) is one copy per input of the largest tensor plus the
    merged float32 one, what merge_needs counts (it counted 3 x models); only jobs.multislerp's cache-sized
    blocks come on top."""
    from jobs import merge
    from jobs.multislerp import BLOCK
    from tests.test_merge import make_variant

    rows, models = 1 << 16, 3  # a 16 MB float32 embedding, far the largest tensor

    def big_embedding(seed):
        def edit(tensors):
            tensors["embed_tokens.weight"] = torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed))
        return edit

    inputs = [make_variant(tiny_model_dir, tmp_path / f"in{i}", seed=i, edit=big_embedding(i)) for i in range(models)]
    tracker, read = LiveBytes(set()), merge.InputModel.read

    def counted(self, name):
        tensor = read(self, name)
        tracker.add(tensor, set())
        return tensor

    monkeypatch.setattr(merge.InputModel, "read", counted)
    with tracker.mode:
        assert merge.main(["--models", ",".join(map(str, inputs)), "--weights", "1,1,1",
                           "--output", str(tmp_path / "out")]) == 0
    largest = rows * 64 * 4
    shape = ModelShape("merge", rows, 64, 256, 2, 4, 2, 16)  # its embedding is the largest tensor
    planned = (estimate.merge_needs(shape, models).ram_gb - estimate.PROCESS_RAM_GB) * estimate.GB / largest
    assert planned == models + 1
    blocks = 2 * models * BLOCK * 4 + 4096  # a float32 block of every input and its product, the k x k algebra
    assert 0 <= tracker.peak - planned * largest <= blocks, tracker.peak / largest
