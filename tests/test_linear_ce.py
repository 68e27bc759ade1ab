"""The fused LM-head cross-entropy equals F.cross_entropy on the logits, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from seal_lm.linear_ce import linear_cross_entropy


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [3, 128])
def test_linear_cross_entropy_matches_cross_entropy(softcap, chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 16, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 50, (11,), generator=g)
    upstream = torch.rand(11, generator=g, dtype=torch.float64)  # per-token weights, as per-adapter means give

    h1 = hidden.clone().requires_grad_(True)
    logits = h1 @ weight.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits, targets, reduction="none")
    (ref * upstream).sum().backward()

    h2 = hidden.clone().requires_grad_(True)
    got = linear_cross_entropy(h2, weight, targets, softcap=softcap, chunk=chunk)
    (got * upstream.float()).sum().backward()

    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_without_grad_and_with_trainable_head():
    hidden, weight, targets = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 9])
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets),
                               F.cross_entropy(hidden @ weight.t(), targets, reduction="none"))
    with pytest.raises(ValueError, match="frozen"):
        linear_cross_entropy(hidden.requires_grad_(True), weight.requires_grad_(True), targets)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_linear_cross_entropy_in_training_dtypes(dtype, tol):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(200, 32, generator=g).to(dtype)  # 200 tokens: two chunks, the last one partial
    weight = (torch.randn(300, 32, generator=g) * 0.3).to(dtype)
    targets = torch.randint(0, 300, (200,), generator=g)
    h1 = hidden.clone().requires_grad_(True)
    ref = F.cross_entropy((h1 @ weight.t()).float(), targets, reduction="none")
    ref.mean().backward()
    h2 = hidden.clone().requires_grad_(True)
    got = linear_cross_entropy(h2, weight, targets)
    got.mean().backward()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h2.grad.float(), h1.grad.float(), rtol=tol, atol=tol * 1e-2)


def test_linear_cross_entropy_of_no_tokens():
    h = torch.randn(0, 8, requires_grad=True)
    loss = linear_cross_entropy(h, torch.randn(10, 8), torch.zeros(0, dtype=torch.long))
    assert loss.shape == (0,)
    loss.sum().backward()
    assert h.grad.shape == (0, 8)
