"""The fused output-layer loss gives the value and gradients of the plain cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

from mtcli import loss as fused
from mtcli.loss import output_loss

PAD = 0


def plain(hidden, weight, target, smoothing):
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=smoothing, reduction="sum")


def both(smoothing, dtype=torch.float32, rows=37, vocab=50, dim=16):
    torch.manual_seed(0)
    hidden = torch.randn(rows, dim, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    target = torch.randint(1, vocab, (rows,))
    target[::5] = PAD  # padding rows count for nothing
    out = []
    for f in (plain, lambda h, w, t, s: output_loss(h, w, t, PAD, s)):
        hidden.grad = weight.grad = None
        value = f(hidden, weight.to(dtype) if f is plain else weight, target, smoothing)
        (value * 3.0).backward()  # a scale on the loss reaches the gradients
        out.append((value.detach(), hidden.grad.clone(), weight.grad.clone()))
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_matches_cross_entropy_in_value_and_gradients(smoothing, monkeypatch):
    monkeypatch.setattr(fused, "ROW_ELEMENTS", 50 * 8)  # 8 rows per slice: several slices and a short last one
    (v1, h1, w1), (v2, h2, w2) = both(smoothing)
    assert torch.allclose(v1, v2, rtol=1e-5)
    assert torch.allclose(h1, h2, atol=1e-5) and torch.allclose(w1, w2, atol=1e-4)
    assert h2[::5].abs().max() == 0  # no gradient from padding rows


def test_fused_loss_in_bf16_is_close_to_the_plain_bf16_loss():
    (v1, h1, w1), (v2, h2, w2) = both(0.1, torch.bfloat16)
    assert h2.dtype == torch.bfloat16 and w2.dtype == torch.float32
    assert torch.allclose(v1, v2, rtol=1e-2)
    for a, b in ((h1.float(), h2.float()), (w1, w2)):  # within bf16 rounding (8 bits of mantissa)
        assert (a - b).abs().max() <= 0.01 * a.abs().max()


def test_without_gradients_the_plain_path_gives_the_same_value():
    torch.manual_seed(0)
    hidden, weight = torch.randn(9, 8), torch.randn(20, 8)
    target = torch.randint(0, 20, (9,))
    with torch.no_grad():
        assert torch.allclose(output_loss(hidden, weight, target, PAD, 0.1), plain(hidden, weight, target, 0.1))


def test_under_autocast_the_products_run_in_bf16_like_a_linear_layer():
    torch.manual_seed(0)
    hidden = torch.randn(12, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    target = torch.randint(1, 30, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused_value = output_loss(hidden, weight, target, PAD, 0.1)
        fused_value.backward()
        reference = F.cross_entropy(F.linear(hidden, weight).float(), target, label_smoothing=0.1, reduction="sum")
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    assert abs(fused_value.item() - reference.item()) < 1e-3 * abs(reference.item())
    with torch.no_grad():
        exact = F.cross_entropy(hidden @ weight.t(), target, label_smoothing=0.1, reduction="sum")
    assert fused_value.item() != exact.item()  # bf16 products, not fp32 ones
