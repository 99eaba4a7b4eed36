"""All terminal rendering (Rich): training progress and validation tables, score tables, attention heatmaps.

The library never prints; the CLI passes its results here.
"""

from __future__ import annotations

import torch
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.style import Style
from rich.table import Table
from rich.text import Text

from mtcli.metrics import Score
from mtcli.training import Callback, EndEvent, StartEvent, StepEvent, ValidationEvent


class TrainingDisplay(Callback):
    """A live progress bar (step, loss, lr, tokens/s, ETA) and a table per validation."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.validations: list[ValidationEvent] = []

    def on_start(self, e: StartEvent) -> None:
        c, m = e.config, e.config.model
        what = f"resuming at step {e.resumed_step}" if e.resumed_step else "training"
        self.console.print(f"[bold]{c.name}[/]: {what}: [bold]{m.backend}[/] backend, "
                           f"{e.parameters:,} parameters, on {e.device} -> {e.run_dir}/")
        for note in e.notes:
            self.console.print(f"  {note}", style="dim")
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("train", total=e.total_steps or None, completed=e.resumed_step,
                                               stats="")
            self.progress.start()

    def on_step(self, e: StepEvent) -> None:
        stats = f"epoch {e.epoch}  loss {e.loss:.3f}  lr {e.lr:.2e}  {e.tokens_per_s:,.0f} tok/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=e.step, stats=stats)
        else:
            total = f"/{e.total_steps}" if e.total_steps else ""
            self.console.print(f"step {e.step}{total}  {stats}  {e.elapsed:.0f}s")

    def on_validation(self, e: ValidationEvent) -> None:
        self.validations.append(e)
        table = Table(title=f"validation at step {e.step} (epoch {e.epoch})", title_justify="left", box=None)
        for name in ("dev loss", "ppl", "BLEU", f"best {e.metric}", "patience"):
            table.add_column(name, justify="right")
        best = f"{e.best_value:.2f} @ {e.best_step}" + (" [green]new[/]" if e.is_best else "")
        table.add_row(f"{e.loss:.3f}", f"{e.ppl:.2f}", f"{e.bleu.score:.2f}", best, str(e.bad_validations))
        samples = Table(box=None, show_header=False, padding=(0, 1))
        samples.add_column(style="dim")
        samples.add_column()
        for src, ref, hyp in e.samples:
            samples.add_row("src", src)
            samples.add_row("ref", ref)
            samples.add_row("hyp", Text(hyp, style="cyan"))
        self.console.print(Group(table, samples))

    def on_end(self, e: EndEvent) -> None:
        if self.progress is not None:
            self.progress.stop()
        best = "no validation"
        if e.best_value is not None:
            best = f"best {e.metric} {e.best_value:.2f} at step {e.best_step}"
        self.console.print(f"[bold]finished[/] ({e.reason.replace('_', ' ')}) at step {e.step}: {best}; "
                           f"{e.train_seconds:.0f}s of training at {e.tokens_per_s:,.0f} target tok/s")
        if e.checkpoint:
            self.console.print(f"best checkpoint: {e.checkpoint}")


def scores_table(scores: dict[str, Score], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("score", justify="right")
    table.add_column("signature", style="dim", overflow="fold")
    for score in scores.values():
        table.add_row(score.name, f"{score.score:.2f}", score.signature)
    return table


SHADES = " ░▒▓█"


VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _color(weight: float) -> str:
    """Viridis-like colour for a weight in [0, 1], as in the PNG figures."""
    x = min(max(weight, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    a, b, f = VIRIDIS[i], VIRIDIS[i + 1], x - i
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return f"rgb({r},{g},{bl})"


def _cell(weight: float) -> Text:
    """Two characters per attention weight: a denser block and a brighter colour for more weight."""
    shade = SHADES[round(min(max(weight, 0.0), 1.0) * (len(SHADES) - 1))]  # nearest of 0, .25, .5, .75, 1
    return Text(shade * 2, style=Style(color=_color(weight), bgcolor=_color(0.0)))


def attention_heatmap(src_tokens: list[str], tgt_tokens: list[str], weights: torch.Tensor, title: str) -> Group:
    """Source tokens across (written top-down), output tokens down; one cell per attention weight."""
    assert weights.shape == (len(tgt_tokens), len(src_tokens)), (weights.shape, len(tgt_tokens), len(src_tokens))
    table = Table(box=None, padding=(0, 0), show_edge=False)
    table.add_column("", justify="right", no_wrap=True)
    for token in src_tokens:
        table.add_column("\n".join(token[:12]), width=2, justify="center", vertical="bottom", no_wrap=True)
    for token, row in zip(tgt_tokens, weights.tolist()):
        table.add_row(Text(token + " ", style="bold"), *[_cell(w) for w in row])
    legend = Text.assemble("weight ", *[(f" {SHADES[i] * 2} {i / (len(SHADES) - 1):.2g}", Style(
        color=_color(i / (len(SHADES) - 1)), bgcolor=_color(0.0))) for i in range(len(SHADES))])
    return Group(Text(title, style="bold"), table, legend)
