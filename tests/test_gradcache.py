"""Gradient caching: chunked embedding gives the unchunked loss and gradients, dropout is replayed, kill -9
resume stays bitwise, and it composes with torchrun's gathered embeddings."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from jobs import data, gradcache, train_bag
from jobs.distributed import Ranks
from jobs.loss import LOSSES, Layout, batch_layout
from tests.test_train_bag import ROOT, flags, reference, spawn, torchrun, wait_for, weights  # noqa: F401


def setup(tiny_model_dir, toy_corpus, method: str):
    config = train_bag.Config(model=str(tiny_model_dir), data=str(toy_corpus), fraction=1.0, seed=0, output="x",
                              method=method, dtype="float32", batch_size=6, kd_loss="none")
    torch.manual_seed(0)
    tokenizer, net, _ = train_bag.load_trainable(config, torch.device("cpu"), torch.float32)
    records = data.read_corpus(str(toy_corpus))[:6]  # one task
    groups = [data.make_group(r, 8, f"k{i}", data.SAMPLERS["keep-all"]) for i, r in enumerate(records)]  # as given
    return config, tokenizer, net, data.Batch(records[0].task, groups)


def gradients(net, tokenizer, batch, config, mini: int, seed: int = 1):
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    from dataclasses import replace

    loss, tokens, _, cached = train_bag.train_batch(net, tokenizer, batch, replace(config, mini_batch_size=mini),
                                                    torch.device("cpu"), Ranks(), 1.0)
    return loss, {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}, cached


def test_chunked_loss_and_gradients_equal_the_unchunked_ones(tiny_model_dir, toy_corpus):
    config, tokenizer, net, batch = setup(tiny_model_dir, toy_corpus, "full")
    whole_loss, whole, cached = gradients(net, tokenizer, batch, config, mini=0)
    assert not cached
    top = max(g.abs().max().item() for g in whole.values())
    for mini in (1, 4):
        loss, chunked, cached = gradients(net, tokenizer, batch, config, mini=mini)
        assert cached and abs(loss - whole_loss) < 1e-5
        # chunks sorted by length pad less than the whole batch: the same gradient up to float32 rounding
        # (RoPE at other absolute positions), so relative to its largest entry (25 here; measured 6e-7)
        assert max((chunked[k] - whole[k]).abs().max().item() for k in whole) / top < 1e-5
    assert top > 1e-3  # a real gradient, not zeros


def test_dropout_is_replayed_in_the_second_pass(tiny_model_dir, toy_corpus, monkeypatch):
    """LoRA dropout 0.1: the cached gradient equals the gradient of the loss with the first pass's dropout
    masks (all chunks through one graph, same RNG stream); without the replay it does not."""
    from jobs.embedder import embed

    config, tokenizer, net, batch = setup(tiny_model_dir, toy_corpus, "lora")
    mini = 4
    _, cached, used = gradients(net, tokenizer, batch, config, mini=mini)
    assert used

    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    queries, docs = train_bag.texts(batch.groups)
    q_in = gradcache.tokenize_sorted(tokenizer, queries, config.query_max_len, mini, torch.device("cpu"))
    d_in = gradcache.tokenize_sorted(tokenizer, docs, config.doc_max_len, mini, torch.device("cpu"))
    q, d = (part.restore(torch.cat([embed(net, piece) for piece in part.inputs])) for part in (q_in, d_in))
    loss = LOSSES["none"](q, d, batch_layout(batch, 1), config.temperature)
    loss.backward()
    truth = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    assert max((cached[k] - truth[k]).abs().max().item() for k in truth) < 1e-5

    class NoReplay:
        def __init__(self, device):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(gradcache, "ReplayRNG", NoReplay)
    _, unreplayed, _ = gradients(net, tokenizer, batch, config, mini=mini)
    assert max((unreplayed[k] - truth[k]).abs().max().item() for k in truth) > 1e-4


def test_losses_match_flagembedding_on_a_hand_made_batch():
    """Two queries, groups of 3; scores chosen by hand; the m3 and kl distillation terms as FlagEmbedding computes."""
    import torch.nn.functional as F

    q = F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    d = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    teacher = [(3.0, 1.0, 0.0), (2.0, 2.0, -1.0)]
    layout = Layout([0, 3], [3, 3], teacher, True)
    s = q @ d.T / 0.05
    plain = F.cross_entropy(s, torch.tensor([0, 3]))
    assert torch.allclose(LOSSES["m3"](q, d, Layout([0, 3], [3, 3], None, True), 0.05), plain)
    # FlagEmbedding's m3_kd_loss (AbsModeling.distill_loss), written out for group size 3
    w = torch.softmax(torch.tensor(teacher), dim=-1)
    labels, mask, m3 = torch.tensor([0, 3]), torch.zeros_like(s), 0
    for i in range(3):
        m3 = m3 + torch.mean(w[:, i] * F.cross_entropy(s + mask, labels + i, reduction="none"))
        mask = torch.scatter(mask, -1, (labels + i)[:, None], torch.finfo(s.dtype).min)
    assert torch.allclose(LOSSES["m3"](q, d, layout, 0.05), m3, atol=1e-6)
    local = torch.stack([s[0, 0:3], s[1, 3:6]])
    kl = plain - torch.mean(torch.sum(torch.log_softmax(local, dim=-1) * w, dim=-1))
    assert torch.allclose(LOSSES["kl"](q, d, layout, 0.05), kl, atol=1e-6)
    no_in_batch = F.cross_entropy(local, torch.tensor([0, 0]))
    assert torch.allclose(LOSSES["m3"](q, d, Layout([0, 3], [3, 3], None, False), 0.05), no_in_batch, atol=1e-6)


@pytest.fixture(scope="module")
def chunked_reference(tiny_model_dir, toy_corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("chunked") / "bag"
    subprocess.run([sys.executable, "-m", "jobs.train_bag",
                    *flags(tiny_model_dir, toy_corpus, output, "--mini-batch-size", "4")], cwd=ROOT, check=True,
                   capture_output=True)
    return output


def test_chunked_training_matches_unchunked_and_resumes_bitwise(chunked_reference, reference, tiny_model_dir,  # noqa: F811
                                                                toy_corpus, tmp_path):
    mine, ref = weights(chunked_reference), weights(reference)
    assert max((mine[k] - ref[k]).abs().max().item() for k in ref) < 1e-4  # same math, other summation order
    output, log = tmp_path / "bag", tmp_path / "log"
    args = flags(tiny_model_dir, toy_corpus, output, "--mini-batch-size", "4")
    process = spawn(args, log)
    wait_for(log, "checkpoint at step 2", process)
    time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    rerun = subprocess.run([sys.executable, "-m", "jobs.train_bag", *args], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming from step" in rerun.stderr
    resumed = weights(output)
    assert all(torch.equal(resumed[k], mine[k]) for k in mine)


def test_two_ranks_with_chunks_train_what_one_process_trains(reference, tiny_model_dir, toy_corpus, tmp_path):  # noqa: F811
    process = torchrun(flags(tiny_model_dir, toy_corpus, tmp_path / "bag", "--mini-batch-size", "2"), tmp_path / "log")
    assert process.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    mine, ref = weights(tmp_path / "bag"), weights(reference)
    assert max((mine[k] - ref[k]).abs().max().item() for k in ref) < 1e-4


# --- issue 22: sorted chunks, the BOOM run's gradient scale ------------------------------------

def test_sequences_are_sorted_by_length_before_chunking(tiny_model_dir):
    from jobs.embedder import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    texts = ["a", "a b c d e f g h", "a b", "a b c d e f", "a b c", "a b c d e f g h i j k"]
    chunks = gradcache.tokenize_sorted(tokenizer, texts, 64, 2, torch.device("cpu"))
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert [lengths[i] for i in chunks.order] == sorted(lengths, reverse=True)
    assert chunks.tokens == sum(lengths)
    widths = sorted(lengths, reverse=True)[::2]  # each chunk of 2 pads to its first (longest) member
    assert chunks.padded_tokens == 2 * sum(widths) < len(texts) * max(lengths)
    rows = torch.arange(len(texts), dtype=torch.float32)[:, None]
    assert chunks.restore(rows[chunks.order]).flatten().tolist() == list(range(len(texts)))


def test_the_gradient_scale_is_what_the_authors_8_rank_ddp_gave_their_optimizer():
    """FlagEmbedding's cross-device loss (AbsModeling._compute_cross_device_neg_loss) on W ranks: every rank
    computes the loss over the gathered batch, its gradient reaches only its own rows, and DDP averages
    the ranks. The no-in-batch loss (_compute_no_in_batch_neg_loss) is each rank's own queries' mean, averaged.
    Emulated here on 8 'ranks' of 2 queries each; train-bag's scale times the loss's gradient equals it."""
    import torch.nn.functional as F

    from jobs import recipe
    from jobs.train_bag import gradient_scale

    world, per_rank, group = recipe.AUTHORS_WORLD_SIZE, 2, 3
    n = world * per_rank
    q = F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    d = F.normalize(torch.randn(n * group, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    for in_batch in (True, False):
        layout = Layout([i * group for i in range(n)], [group] * n, None, in_batch)
        ours_q, ours_d = q.clone().requires_grad_(), d.clone().requires_grad_()
        scale = gradient_scale(in_batch, recipe.IN_BATCH_GRAD_SCALE, 1)
        (LOSSES["none"](ours_q, ours_d, layout, 0.02) * scale).backward()
        theirs_q, theirs_d = torch.zeros_like(q), torch.zeros_like(d)
        for rank in range(world):
            mine_q = q[rank * per_rank:(rank + 1) * per_rank].clone().requires_grad_()
            mine_d = d[rank * per_rank * group:(rank + 1) * per_rank * group].clone().requires_grad_()
            if in_batch:  # all_gather, the local tensor put back with its graph
                all_q = torch.cat([q[:rank * per_rank], mine_q, q[(rank + 1) * per_rank:]])
                all_d = torch.cat([d[:rank * per_rank * group], mine_d, d[(rank + 1) * per_rank * group:]])
                loss = F.cross_entropy(all_q @ all_d.T / 0.02, torch.arange(n) * group)
            else:
                local = torch.stack([mine_q[i] @ mine_d[i * group:(i + 1) * group].T for i in range(per_rank)]) / 0.02
                loss = F.cross_entropy(local, torch.zeros(per_rank, dtype=torch.long))
            loss.backward()
            theirs_q[rank * per_rank:(rank + 1) * per_rank] += mine_q.grad / world  # DDP's average
            theirs_d[rank * per_rank * group:(rank + 1) * per_rank * group] += mine_d.grad / world
        assert torch.allclose(ours_q.grad, theirs_q, atol=1e-5) and torch.allclose(ours_d.grad, theirs_d, atol=1e-5)
    assert recipe.IN_BATCH_GRAD_SCALE == 1 / 8
