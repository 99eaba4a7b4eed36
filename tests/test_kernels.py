"""Each speed kernel against its plain PyTorch formula: the fused loss against cross_entropy, the dropout
kernels against relu and dropout by the same mask, attention against softmax(q k^T / sqrt(d)) v."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtcli.kernels import attention as attention_kernel
from mtcli.kernels import loss as fused
from mtcli.kernels.attention import attention
from mtcli.kernels.dropout import Dropout, dropout, relu_dropout
from mtcli.kernels.loss import output_loss

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


# ---------------------------------------------------------------- dropout


def test_cpu_dropout_keeps_the_right_share_scales_and_passes_gradients_through_the_kept_elements():
    torch.manual_seed(0)
    drop = Dropout(0.3)
    x = torch.ones(1000, 101, requires_grad=True)  # an odd element count
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.tensor(1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x is the same scaled mask
    assert drop(x.bfloat16()).dtype == torch.bfloat16
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the global generator decides: seeded runs repeat
    assert not torch.equal(drop(x), y)  # and each call draws a fresh mask from it
    drop.eval()
    assert drop(x) is x
    assert dropout(x, 0.0, True) is x


def test_cpu_dropout_masks_are_independent_of_each_other_and_of_position():
    torch.manual_seed(1)
    kept = torch.stack([dropout(torch.ones(4096), 0.5, True) != 0 for _ in range(64)]).float()  # (64, 4096)
    assert abs(kept.mean().item() - 0.5) < 0.005
    # neighbours within a mask (the four 16-bit slices of one random word) and the same position in two
    # masks agree half of the time, as independent fair coins do (a std of 0.001 over ~260k pairs)
    assert abs((kept[:, 1:] == kept[:, :-1]).float().mean().item() - 0.5) < 0.005
    assert abs((kept[1:] == kept[:-1]).float().mean().item() - 0.5) < 0.005


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_relu_dropout_in_one_step_gives_the_values_and_gradients_of_relu_then_dropout(dtype):
    x1 = torch.randn(300, 77).to(dtype).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    g = torch.randn(300, 77).to(dtype)
    torch.manual_seed(5)
    y1 = relu_dropout(x1, 0.25, True)
    torch.manual_seed(5)
    y2 = dropout(torch.relu(x2), 0.25, True)
    assert torch.equal(y1, y2) and (y1 == 0).float().mean() > 0.5  # about half negative, a quarter dropped
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad) and (x1.grad != 0).any()
    assert torch.equal(relu_dropout(x1, 0.25, False), torch.relu(x1))


# ---------------------------------------------------------------- attention


def formula(q, k, v, mask, causal):
    """softmax(q k^T / sqrt(d)) v in float64, with its weights."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    weights = scores.softmax(-1)
    return weights @ v, weights


def qkv_mask(queries=5):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, queries, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False
    return q, k, v, mask


@pytest.mark.parametrize("queries", [5, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_is_softmax_of_scaled_dot_products_times_values(queries, causal, need_weights):
    q, k, v, mask = qkv_mask(queries)
    m = None if causal else mask  # the decoder's self-attention is causal and unmasked
    out, weights = attention(q, k, v, m, causal and queries > 1, need_weights)
    expected, expected_weights = formula(q, k, v, m, causal and queries > 1)
    assert out.dtype == torch.float32 and out.shape == (2, 4, queries, 8)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights.double(), expected_weights, atol=1e-6, rtol=1e-6)
    else:
        assert weights is None


def test_attention_under_bf16_autocast_runs_bf16_products_with_an_fp32_softmax():
    q, k, v, mask = qkv_mask()
    for causal, m in ((False, mask), (True, None)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, weights = attention(q, k, v, m, causal, need_weights=True)
        expected, expected_weights = formula(q, k, v, m, causal)
        assert out.dtype == torch.bfloat16 and weights.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, atol=0.05, rtol=0.05)
        torch.testing.assert_close(weights.double(), expected_weights, atol=0.02, rtol=0.02)


def test_attention_chooses_torchs_fused_kernel_only_for_several_queries_without_weights_or_autocast(monkeypatch):
    calls = []
    fused_kernel = F.scaled_dot_product_attention
    monkeypatch.setattr(attention_kernel.F, "scaled_dot_product_attention",
                        lambda *args, **kw: calls.append(1) or fused_kernel(*args, **kw))
    q, k, v, mask = qkv_mask()

    def fused_ran(q, **kw):
        calls.clear()
        attention(q, k, v, mask, **kw)
        return bool(calls)

    assert fused_ran(q)
    assert not fused_ran(q, need_weights=True)
    assert not fused_ran(q[:, :, :1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_ran(q)
