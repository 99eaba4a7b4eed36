"""Attention score functions for the RNN backend: one signature, score(query, keys) -> (B, S).

  dot       h_t . h_s                       (Luong)
  general   h_t . W h_s                     (Luong)
  additive  v . tanh(W1 h_s + W2 h_t)       (Bahdanau)
Keys are projected once per sentence (`project_keys`), so each decoder step costs only the query side.
"""

from __future__ import annotations

import torch
from torch import nn


class DotScore(nn.Module):
    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        assert query_dim == key_dim, "dot attention needs decoder and encoder states of one size"

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return keys  # (B, S, H)

    def forward(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(proj_keys, query.unsqueeze(2)).squeeze(2)  # (B, S)


class GeneralScore(DotScore):
    def __init__(self, query_dim: int, key_dim: int):
        nn.Module.__init__(self)
        self.W = nn.Linear(key_dim, query_dim, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.W(keys)  # (B, S, Hq): W h_s for every source position, once


class AdditiveScore(nn.Module):
    def __init__(self, query_dim: int, key_dim: int, attn_dim: int | None = None):
        super().__init__()
        attn_dim = attn_dim or query_dim
        self.W1 = nn.Linear(key_dim, attn_dim, bias=False)
        self.W2 = nn.Linear(query_dim, attn_dim, bias=False)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.W1(keys)  # (B, S, A)

    def forward(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        return self.v(torch.tanh(proj_keys + self.W2(query).unsqueeze(1))).squeeze(2)  # (B, S)


SCORES = {"dot": DotScore, "general": GeneralScore, "additive": AdditiveScore}


def attend(scores: torch.Tensor, src_mask: torch.Tensor, values: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over source positions (padding masked) -> (context (B, H), weights (B, S))."""
    weights = torch.softmax(scores.masked_fill(~src_mask, float("-inf")), dim=-1)
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights
