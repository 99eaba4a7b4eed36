"""One translated sentence's attention, as a matrix ready to draw (terminal or figure).

Picks a layer and a head (or the mean over heads) from the K = layers x heads maps search returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtcli.checkpoint import Bundle
from mtcli.data.corpus import load_split
from mtcli.errors import MtcliError
from mtcli.evaluation import translator


@dataclass
class AttentionView:
    src_tokens: list[str]
    tgt_tokens: list[str]
    weights: torch.Tensor  # (T, S)
    translation: str
    title: str


def attention_view(bundle: Bundle, sentence: str | None, beam: int | None, layer: int | None,
                   head: int | None) -> AttentionView | None:
    """None when the backend has no attention."""
    if not bundle.model.has_attention:
        return None
    layers, heads = bundle.model.attention_shape()
    if layer is not None and layer > layers:
        raise MtcliError(f"--layer {layer}: the model has {layers} decoder layer(s)")
    if head is not None and head > heads:
        raise MtcliError(f"--head {head}: the model has {heads} attention head(s)")
    if sentence is None:
        sentence = load_split(bundle.config.data, "test").src[0]
    if not sentence.strip():
        raise MtcliError("--sentence: nothing to translate")
    result = translator(bundle).translate([sentence], beam, need_attention=True)[0]
    maps = result.attention.view(len(result.tgt_pieces), layers, heads, -1)  # (T, L, H, S)
    chosen = maps[:, (layer or layers) - 1]  # (T, H, S)
    weights = chosen.mean(dim=1) if head is None else chosen[:, head - 1]
    beam_size = beam or bundle.config.decode.beam_size
    what = bundle.config.model.backend
    if what == "attention":
        what = f"{bundle.config.model.attention} attention"
    elif layers * heads > 1:
        what += f" cross-attention, layer {layer or layers}/{layers}, " + (
            f"head {head}/{heads}" if head else f"mean of {heads} heads")
    title = f"{bundle.config.name}: {what}, {'greedy' if beam_size == 1 else f'beam {beam_size}'}"
    return AttentionView(result.src_pieces, result.tgt_pieces, weights, result.text, title)
