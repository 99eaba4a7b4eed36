"""The training loss fused with the output layer: label-smoothed cross-entropy of `hidden @ weight.T`.

The plain way materialises the logits of the whole batch (tokens x vocabulary, ~130 MB in fp32 for a
4k-token batch and an 8k vocabulary) several times over: the logits, their fp32 copy, the log-softmax
kept for backward and its gradient. Here the rows are taken a slice at a time: each slice's logits,
log-softmax, loss and gradients are computed at once in the forward pass (the gradients w.r.t. the
hidden states and the weight are kept; the logits are not), so the big tensors are a few MB that the
allocator reuses. The value and the gradients are those of

    F.cross_entropy(hidden @ weight.T, target, ignore_index=PAD, label_smoothing=eps, reduction="sum")

up to floating-point rounding (tests/test_kernels.py checks it against that).

Measured on a 2-core CPU (AVX-512 BF16), torch 2.13, training bf16 bench configs:
  - against that plain loss: bench-transformer ~3,470 -> ~4,150 tok/s and ~400 MB less peak memory;
    bench-attention 5,982 -> 8,135 tok/s (padding rows left out before the output layer).
  - the probabilities from torch.softmax (its kernel ~0.7 ms for a 262 x 8,000 fp32 slice, against
    ~1.2 ms for exp alone) and the log-normaliser from the row maximum's probability: in-process A/B
    against one exp per logit: bf16 Transformer +1.9 / +3.7%, fp32 +1.6 / -0.1%, bf16 attention RNN
    +1.6 / +2.2%.
  - slices of 131 to 1,048 rows instead of 262 (ROW_ELEMENTS at an 8k vocabulary): slower.
"""

from __future__ import annotations

import torch

ROW_ELEMENTS = 1 << 21  # logits per slice (8 MB in fp32): small enough to stay in the allocator's reuse


class _FusedOutputLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, smoothing: float
                ) -> torch.Tensor:
        """Every row counts: output_loss has left out the padding rows."""
        dtype = hidden.dtype  # the compute dtype (bf16 under autocast, else fp32)
        w = weight.to(dtype)
        vocab = w.size(0)
        rows = max(1, ROW_ELEMENTS // vocab)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.size(0), rows):
            h, t = hidden[start: start + rows], target[start: start + rows]
            logits = (h @ w.t()).float()  # (n, V)
            top = logits.amax(dim=1, keepdim=True)
            mean = logits.mean(dim=1, keepdim=True)
            picked = logits.gather(1, t.unsqueeze(1))
            # softmax's own kernel, several times faster than exp over the logits on a CPU. At a row's maximum
            # it is exp(0) / sum(exp(logits - top)), so the log-normaliser is top - log(its largest value)
            probs = torch.softmax(logits, dim=1)
            log_norm = top - probs.amax(dim=1, keepdim=True).log_()
            loss = (1.0 - smoothing) * (log_norm - picked) + smoothing * (log_norm - mean)
            total += loss.sum()
            # d loss / d logits = softmax - (1 - eps) one_hot(target) - eps / V
            probs.sub_(smoothing / vocab).scatter_add_(1, t.unsqueeze(1), top.new_full(picked.shape, smoothing - 1.0))
            grad = probs.to(dtype)
            grad_hidden[start: start + rows] = grad @ w
            grad_weight += (grad.t() @ h).float()
        ctx.grads = grad_hidden, grad_weight.to(weight.dtype)  # intermediates, not inputs: kept on ctx
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        return grad_hidden * grad_output.to(grad_hidden.dtype), grad_weight * grad_output, None, None


def output_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore: int,
                smoothing: float = 0.0) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of the logits `hidden @ weight.T` over rows whose target is not
    `ignore`. hidden (N, D), weight (V, D), target (N,); the products run in hidden's dtype, or under
    autocast in its dtype. Without gradients (eval) the plain path runs."""
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        logits = (hidden @ weight.to(hidden.dtype).t()).float()
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore, label_smoothing=smoothing,
                                                 reduction="sum")
    real = target != ignore  # padding rows cost nothing: only the real ones go through the output layer
    hidden, device = hidden[real], hidden.device.type
    if torch.is_autocast_enabled(device):  # the products run in autocast's dtype, as a Linear layer's would
        hidden = hidden.to(torch.get_autocast_dtype(device))
    with torch.autocast(device, enabled=False):
        return _FusedOutputLoss.apply(hidden, weight, target[real], smoothing)
