"""One-node RMSNorm (norms.py): same outputs as transformers' forward, the same input gradients, applied
only to Llama's formula and to frozen weights."""

import copy

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from seal_lm.norms import fuse_rms_norms


def _norm(dtype, eps=1e-5):
    norm = LlamaRMSNorm(16, eps=eps).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
    norm.weight.requires_grad_(False)
    return norm


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fused_norm_matches_transformers(dtype):
    hf = _norm(dtype)
    ours = copy.deepcopy(hf)
    assert fuse_rms_norms(nn.Sequential(ours)) == 1 and fuse_rms_norms(nn.Sequential(ours)) == 0  # not twice
    x0 = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype) * 3
    g = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    outs = []
    for m in (hf, ours):
        x = x0.clone().requires_grad_(True)
        y = m(x)
        y.backward(g)
        outs.append((y.detach(), x.grad))
        assert torch.equal(x.detach(), x0)  # the input is not modified (x.float() is x itself in fp32)
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=0)  # forward: the same arithmetic
    # (transformers computes in fp32 whatever the input dtype, float64 included, and so do we)
    tol = {torch.float64: 1e-5, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=tol, atol=tol)
    with torch.no_grad():  # decoding: transformers' own forward
        torch.testing.assert_close(ours(x0), hf(x0), rtol=0, atol=0)


def test_trainable_weight_and_other_formulas_keep_their_forward():
    norm = _norm(torch.float32)
    fuse_rms_norms(norm)
    norm.weight.requires_grad_(True)
    norm(torch.randn(3, 16)).sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0

    class GemmaLikeRMSNorm(nn.Module):  # (1 + weight), as Gemma: not Llama's formula
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = nn.Parameter(torch.zeros(16)), 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)

    assert fuse_rms_norms(GemmaLikeRMSNorm()) == 0


def test_engine_fuses_the_norms_of_a_cpu_model(tiny):
    from seal_lm.engine import Engine

    engine = Engine(tiny, n_slots=1)
    norms = [m for m in engine.model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and all(hasattr(m, "_seal_hf_forward") for m in norms)
