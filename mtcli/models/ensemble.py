"""Several models that share the vocabularies, decoding as one: just another implementation of the backend
interface, so the search drives it like any backend. Each step averages the members' probabilities (the
log of the mean of their probabilities), as fairseq's EnsembleModel and sockeye's ensemble inference do.

Knows nothing of checkpoints; whoever builds it checks that the vocabularies agree.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtcli.models.base import Backend, State


class Ensemble(Backend):
    def __init__(self, members: list[Backend]):
        super().__init__()
        assert members, "an ensemble needs at least one model"
        self.members = nn.ModuleList(members)
        shapes = {m.attention_shape() for m in members}
        # attention is the members' mean, which needs one shape of maps
        self.has_attention = all(m.has_attention for m in members) and len(shapes) == 1

    def attention_shape(self) -> tuple[int, int]:
        return self.members[0].attention_shape()

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        return {"members": [m.encode(src, src_mask) for m in self.members]}

    def init_state(self, memory: State) -> State:
        return {"members": [m.init_state(part) for m, part in zip(self.members, memory["members"])]}

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        outs = [m.step(prev, part, need_attention and self.has_attention)
                for m, part in zip(self.members, state["members"])]
        log_probs = torch.logsumexp(torch.stack([o[0] for o in outs]), dim=0) - math.log(len(outs))  # (B, V)
        attention = torch.stack([o[2] for o in outs]).mean(dim=0) if need_attention and self.has_attention else None
        return log_probs, {"members": [o[1] for o in outs]}, attention

    def reorder(self, state: State, index: torch.Tensor, same_sentences: bool = False) -> State:
        return {"members": [m.reorder(part, index, same_sentences) for m, part in zip(self.members, state["members"])]}

    def search_floats(self, src_len: int, out_len: int) -> int:
        """Every member's, plus the stacked log-probabilities and their mean."""
        vocab = self.members[0].output.weight.size(0)
        return sum(m.search_floats(src_len, out_len) for m in self.members) + (len(self.members) + 1) * vocab
