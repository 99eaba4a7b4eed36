"""Figures with matplotlib (Agg backend): pure functions from data to a saved PNG/SVG file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mtcli.errors import MtcliError  # noqa: E402

FORMATS = {".png", ".svg", ".pdf"}


def save_attention_figure(src_tokens: list[str], tgt_tokens: list[str], weights: torch.Tensor, title: str,
                          path: Path) -> Path:
    """Heatmap of `weights` (T, S): source tokens across the top, output tokens down the side."""
    if path.suffix.lower() not in FORMATS:
        raise MtcliError(f"{path}: unsupported figure format (use {', '.join(sorted(FORMATS))})")
    rows, cols = weights.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * cols + 1.8), max(3.0, 0.32 * rows + 1.6)))
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), labels=src_tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(rows), labels=tgt_tokens, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title, fontsize=9, pad=12)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="attention weight")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=150)
    except OSError as exc:
        raise MtcliError(f"{path}: cannot write the figure ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path
