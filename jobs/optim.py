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
"""
from __future__ import annotations

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
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                t = state["step"]
                g = p.grad.float()
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
