"""RMSNorm with a frozen weight as one autograd node (CPU training passes).

transformers' Llama-style RMSNorm (`LlamaRMSNorm` and its copies: Qwen2, Mistral, ...) is eight ops under
autograd: a cast to fp32, pow, mean, add, rsqrt, mul, a cast back and the weight's mul, and about twelve in
the backward, each a pass over a [tokens, hidden] tensor. A SEAL training step runs 2 * layers + 1 of them on
short packed rows, where those passes are a visible share of the step (on the 2-core Xeon of docs/RESULTS.md
this node cut a ReST-EM round's training calls by ~12%: train_mfu.py, session 8). Here the
forward is the same arithmetic in the same order (bit-identical outputs) and the backward is written out:
five passes. Only for a frozen weight (SEAL trains LoRA adapters, never the norms): a norm whose weight
requires grad runs transformers' own forward.
"""

from __future__ import annotations

import inspect
import types

import torch
from torch import nn


class _FrozenRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        rstd = x32.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
        ctx.save_for_backward(x, rstd, weight)
        return weight * (x32 * rstd).to(x.dtype)  # (x32 is x itself when x is fp32: not in place)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        # y = w * xhat, xhat = x * rstd: dx = rstd * (gw - xhat * mean(gw * xhat)), gw = g * w (in fp32, as
        # autograd does through the fp32 upcast)
        gw = (g * weight).float()
        xhat = x.float() * rstd
        dot = (gw * xhat).mean(-1, keepdim=True)
        return gw.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype), None, None


def _llama_rms_norm_source() -> str | None:
    try:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
    except ImportError:  # pragma: no cover - transformers without Llama
        return None
    return inspect.getsource(LlamaRMSNorm.forward)


def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if self.weight.requires_grad or not torch.is_grad_enabled():
        # a trainable weight needs its gradient (transformers' code); no-grad passes need no saved tensors
        return self._seal_hf_forward(hidden_states)
    return _FrozenRMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def fuse_rms_norms(model: nn.Module) -> int:
    """Give every RMSNorm of `model` whose forward is Llama's formula (checked on its source text, so a
    variant such as Gemma's `(1 + weight)` keeps its own) the one-node training forward. Returns how many."""
    reference = _llama_rms_norm_source()
    if reference is None:
        return 0
    n = 0
    for module in model.modules():
        cls = type(module)
        if not cls.__name__.endswith("RMSNorm") or hasattr(module, "_seal_hf_forward"):
            continue
        try:
            same = inspect.getsource(cls.forward) == reference
        except (OSError, TypeError):
            same = False
        if same and isinstance(getattr(module, "weight", None), nn.Parameter) and hasattr(module, "variance_epsilon"):
            module._seal_hf_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n
