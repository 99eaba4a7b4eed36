"""Figures with matplotlib (Agg backend): pure functions from data to a Figure, and saving one to PNG/SVG/PDF.

SVG files keep their text as text (svg.fonttype none), so titles and labels can be searched and edited.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mtcli.errors import MtcliError  # noqa: E402
from mtcli.files import atomic_write  # noqa: E402
from mtcli.visualize import FIGURE_FORMATS  # noqa: E402

if TYPE_CHECKING:
    from mtcli.analysis import Comparison
    from mtcli.visualize import AttentionGrid, AttentionView, RunCurves

MAX_INCHES = 60.0  # a figure side never grows past this, however long the sentence or deep the model


def check_figure_path(path: Path) -> Path:
    if path.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise MtcliError(f"{path}: unsupported figure format (use {', '.join('.' + f for f in FIGURE_FORMATS)})")
    return path


SVG_TEXT = {"svg.fonttype": "none"}  # SVG text stays text: searchable, editable


def svg_markup(fig: Figure) -> str:
    """The figure as inline SVG markup (for an HTML page), and the figure closed."""
    buffer = io.StringIO()
    try:
        with plt.rc_context(SVG_TEXT):
            fig.savefig(buffer, format="svg")
    finally:
        plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig` (the format from the suffix; atomically, a failure is a WriteError) and close it."""
    try:
        fmt = check_figure_path(path).suffix.lower().lstrip(".")
        with plt.rc_context(SVG_TEXT):
            atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=150))
    finally:
        plt.close(fig)
    return path


def attention_figure(src_tokens: list[str], tgt_tokens: list[str], weights: torch.Tensor, title: str,
                     xlabel: str = "source", ylabel: str = "output") -> Figure:
    """Heatmap of `weights` (T, S): source tokens across the top, output tokens down the side."""
    rows, cols = weights.shape
    fig, ax = plt.subplots(figsize=(min(MAX_INCHES, max(4.0, 0.32 * cols + 1.8)),
                                    min(MAX_INCHES, max(3.0, 0.32 * rows + 1.6))))
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), labels=src_tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(rows), labels=tgt_tokens, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9, pad=12)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="attention weight")
    fig.tight_layout()
    return fig


def save_attention_figure(src_tokens: list[str], tgt_tokens: list[str], weights: torch.Tensor, title: str,
                          path: Path) -> Path:
    check_figure_path(path)
    return save_figure(attention_figure(src_tokens, tgt_tokens, weights, title), path)


def grid_figure(grid: AttentionGrid) -> Figure:
    """One heatmap per layer (rows) and head (columns), titled "layer l, head h"; one shared colour scale.
    Token labels on the left column and the bottom row."""
    layers, heads, rows, cols = grid.weights.shape
    cell = 0.16 if max(rows, cols) > 20 else 0.24
    panel_w, panel_h = max(1.6, cell * cols + 0.9), max(1.4, cell * rows + 0.8)
    width = min(MAX_INCHES, panel_w * heads + 1.2)
    height = min(MAX_INCHES, panel_h * layers + 1.0)
    fig, axes = plt.subplots(layers, heads, figsize=(width, height), squeeze=False, layout="constrained")
    font = 7 if max(rows, cols) <= 20 else 5
    image = None
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            image = ax.imshow(grid.weights[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks(range(cols), labels=grid.key_tokens if layer == layers - 1 else [], rotation=90,
                          fontsize=font)
            ax.set_yticks(range(rows), labels=grid.query_tokens if head == 0 else [], fontsize=font)
            if layer == layers - 1:
                ax.set_xlabel(grid.key_label, fontsize=8)
            if head == 0:
                ax.set_ylabel(grid.query_label, fontsize=8)
    fig.suptitle(grid.title, fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02, shrink=0.9, label="attention weight")
    return fig


def view_figure(view: AttentionView | AttentionGrid) -> Figure:
    """The figure of either kind of view: one heatmap, or a grid of them."""
    if view.weights.dim() == 4:
        return grid_figure(view)  # type: ignore[arg-type]
    return attention_figure(view.src_tokens, view.tgt_tokens, view.weights, view.title)  # type: ignore[union-attr]


CURVE_PANELS = ("training loss", "dev BLEU by step", "dev BLEU by training time")


def curves_figure(runs: list[RunCurves]) -> Figure:
    """Three panels, the runs overlaid in the same colour on each: training loss vs step, dev BLEU vs
    step, dev BLEU vs training seconds (validation excluded); a legend names the runs."""
    fig, axes = plt.subplots(1, 3, figsize=(15.0, 4.4), layout="constrained")
    loss_ax, step_ax, time_ax = axes
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        loss_ax.plot(run.steps, run.losses, color=color, label=run.name)
        step_ax.plot(run.dev_steps, run.dev_bleu, color=color, marker="o", markersize=3, label=run.name)
        time_ax.plot(run.dev_elapsed, run.dev_bleu, color=color, marker="o", markersize=3, label=run.name)
    for ax, title in zip(axes, CURVE_PANELS):
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss per target token")
    step_ax.set_xlabel("step")
    step_ax.set_ylabel("BLEU")
    time_ax.set_xlabel("training seconds (validation excluded)")
    time_ax.set_ylabel("BLEU")
    for ax in (step_ax, time_ax):
        ax.set_ylim(bottom=0.0)
    for ax in axes:
        if ax.get_lines():
            ax.legend(fontsize=8)
    return fig


def length_figure(result: Comparison) -> Figure:
    """BLEU against source length, one line per run (Bahdanau et al., 2015, Figure 2, for your own runs);
    the legend carries each attention model's AER against the gold alignments where there is one."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    buckets = result.runs[0].buckets
    for run in result.runs:
        points = [(i, b.bleu) for i, b in enumerate(run.buckets) if b.bleu is not None]
        label = f"{run.name}: {run.backend}"
        if run.alignment is not None:
            label += f", AER {run.alignment.main.aer:.1f}%"
        ax.plot([i for i, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xticks(range(len(buckets)), labels=[f"{b.label}\n({b.sentences})" for b in buckets], fontsize=8)
    ax.set_xlabel("source sentence length in words (sentences)")
    ax.set_ylabel("BLEU")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"BLEU by source length: {result.test_set}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def save_length_figure(result: Comparison, path: Path) -> Path:
    check_figure_path(path)  # before drawing anything
    return save_figure(length_figure(result), path)
