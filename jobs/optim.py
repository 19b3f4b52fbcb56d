"""AdamW that does not lose updates to bfloat16 rounding: Kahan-compensated bf16 weights, fp32 moments.

Why: a bf16 weight w has 8 significant bits, so an update smaller than half its spacing,
|u| < 2^-9 |w|, rounds to nothing. At lr 5e-5 Adam's step is about lr per weight, while a weight of
0.02 is spaced 1.2e-4 apart: plain torch.optim.AdamW on bf16 weights (what the job did on GPUs)
drops nearly every update, and its bf16 moments stall the same way (beta2 = 0.999 adds 0.1 % of
g^2 a step, under bf16's 0.2 % half-spacing). Measured on the tiny model, 40 steps at lr 1e-5: the
bf16 run's weight change has cosine 0.17 with the float32 run's on a GPU and 0 on the CPU.

The update, per parameter p (bf16) with compensation c (bf16, the part of the true weight that p
cannot hold), fp32 moments m, v and step t (the AdamW of Loshchilov & Hutter, torch's defaults):
    g = grad (fp32);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    u = -lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) - lr wd (p + c)
    y = u + c;  p' = bf16(p + y);  c' = bf16(y - (p' - p))          (Kahan summation, in fp32)
so p + c tracks the fp32 trajectory; c is itself bf16 and is rounded by up to 2^-9 of itself each
step, so the tracking is not exact: fed the same gradients for 200 steps at lr 1e-5, the weight
change of p + c is 0.5 % (relative L2) off fp32 AdamW's, plain bf16 AdamW's 99.6 % (tests). Float32 parameters (LoRA adapters,
a float32 run) take the same update with no compensation, i.e. plain AdamW. Only deterministic
torch ops, no RNG: a resumed run is bitwise the same. Memory per bf16 parameter: weight 2 + gradient
2 + compensation 2 + moments 8 = 14 bytes (fp32 master weights with bf16 autocast: 16 bytes and a
bf16 copy of every weight per forward; optimi's Kahan AdamW keeps bf16 moments: 10 bytes, but
bf16 second moments stall as said above). The compensation buffers are optimizer state, so they
are checkpointed with it; `precise(p)` = p + c in float32 is what the job writes out.

Initial compensation: when a float32 model is loaded into bf16, `initial_compensation` holds
w32 - bf16(w32), so p + c starts at the float32 weights, not at their rounding.

Gradients are summed in float32 too (Float32Grads): a step's gradient is the sum of one backward per
gradient-cache chunk (9 to 72 of them in the BOOM batches); summed in a bf16 .grad, each addition
rounds to 8 bits (measured: 0.4-1 % relative error), summed in a float32 buffer it does not.
KahanAdamW.step(grads) reads those sums.

The learning-rate schedule (warmup_decay): warmup, then linear decay to 0; the warmup's shape is the
BOOM scripts' (DeepSpeed's WarmupDecayLR, logarithmic) or transformers' (linear).
"""
from __future__ import annotations

import math

import torch

COMPENSATED = (torch.bfloat16, torch.float16)


class KahanAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, initial_compensation: dict | None = None):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        initial_compensation = initial_compensation or {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                if p.dtype in COMPENSATED:
                    given = initial_compensation.get(p)
                    state["compensation"] = (given.to(device=p.device, dtype=p.dtype).clone() if given is not None
                                             else torch.zeros_like(p))

    @torch.no_grad()
    def step(self, closure=None, grads: dict | None = None):
        """One update; `grads` (parameter -> float32 gradient, e.g. Float32Grads.sums) replaces .grad."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                g = grads.get(p) if grads is not None else p.grad
                if g is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                t = state["step"]
                g = g.float()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
                update = (m / (1 - beta1 ** t)).div_(denom).mul_(-lr)
                compensation = state.get("compensation")
                if compensation is None:  # a float32 parameter: plain AdamW
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update)
                    continue
                old = p.float()
                if wd:
                    update.sub_((old + compensation.float()).mul_(lr * wd))
                y = update.add_(compensation.float())
                new = (old + y).to(p.dtype)
                compensation.copy_(y.sub_(new.float() - old))
                p.copy_(new)
        return loss

    def precise(self, p: torch.Tensor) -> torch.Tensor:
        """The parameter's value as the optimizer knows it, in float32 (p + its compensation)."""
        compensation = self.state.get(p, {}).get("compensation")
        return p.detach().float() + (compensation.float() if compensation is not None else 0)

    def load_state_dict(self, state_dict: dict) -> None:
        """Like torch's, but keeps every state tensor's own dtype (torch casts them to the parameter's,
        which would round the float32 moments of a bf16 parameter)."""
        groups = state_dict["param_groups"]
        params = [p for group in self.param_groups for p in group["params"]]
        ids = [i for group in groups for i in group["params"]]
        if len(ids) != len(params) or len(groups) != len(self.param_groups):
            raise ValueError("the optimizer state does not match the parameters")
        for mine, saved in zip(self.param_groups, groups):
            mine.update({k: v for k, v in saved.items() if k != "params"})
        for index, p in zip(ids, params):
            saved = state_dict["state"].get(index)
            if saved is None:
                continue
            self.state[p] = {k: (v.to(device=p.device).clone() if torch.is_tensor(v) else v) for k, v in saved.items()}


def split_float32(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo): hi = weight rounded to `dtype`, lo = what it lost, also in `dtype`; hi + lo ~ weight."""
    hi = weight.to(dtype)
    return hi, (weight.float() - hi.float()).to(dtype)


class Float32Grads:
    """A float32 sum of every trainable parameter's gradient over the backward calls of one step.

    Call collect() after each backward: it adds each .grad into the sum and clears it, so the next
    backward starts from zero in the parameter's own dtype and nothing is rounded to bf16 twice. Costs
    4 bytes per parameter; float32 parameters (LoRA adapters) are summed the same way."""

    def __init__(self, params) -> None:
        self.sums = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}

    def collect(self) -> None:
        for p, total in self.sums.items():
            if p.grad is not None:
                total.add_(p.grad)
                p.grad = None

    def clip_(self, max_norm: float) -> float:
        """Scale the sums so their global L2 norm is at most max_norm (torch's clip_grad_norm_); the norm before."""
        norm = torch.nn.utils.get_total_norm(list(self.sums.values()))
        coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(list(self.sums.values()), coefficient)
        return float(norm)

    def to_grad(self) -> None:
        """Hand the sums to an optimizer that reads .grad (in the parameter's dtype)."""
        for p, total in self.sums.items():
            p.grad = total.to(p.dtype)

    def zero_(self) -> None:
        for total in self.sums.values():
            total.zero_()


def warmup_decay(step: int, *, warmup_steps: int, total_steps: int, warmup: str) -> float:
    """The learning rate of optimizer step `step` (0-based) as a fraction of the peak.

    linear: transformers' get_linear_schedule_with_warmup (what HF's Trainer does without DeepSpeed):
        step / W during the W warmup steps, then (total - step) / (total - W).
    log: DeepSpeed's WarmupDecayLR with its default warmup_type "log" (deepspeed/runtime/lr_schedules.py),
        which the BOOM scripts select in ds_stage3.json, its "auto" values filled by transformers'
        DeepSpeed integration (integrations/deepspeed.py: warmup_min_lr 0, warmup_max_lr the learning
        rate, warmup_num_steps get_warmup_steps, total_num_steps the training steps). DeepSpeed's
        iteration i trails the optimizer step by one (it starts at -1 with the minimum lr and steps after
        each update), W' = max(2, W):
            i < 0: 0;  i < W': log(i + 1) / log(W');  else max(0, (total - i) / max(1, total - W'))
        so the first two updates run at lr 0 and the third at log 2 / log W' of the peak."""
    if warmup == "linear":
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    iteration, steps = step - 1, max(2, warmup_steps)
    if iteration < 0:
        return 0.0
    if iteration < steps:
        return math.log(iteration + 1) / math.log(steps)
    return max(0.0, (total_steps - iteration) / max(1, total_steps - steps))
