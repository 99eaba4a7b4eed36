"""All terminal rendering (Rich): training progress and validation tables, score tables, attention heatmaps.

The library never prints; the CLI passes its results here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.style import Style
from rich.table import Table
from rich.text import Text

from mtcli.analysis import AlignmentReport, Comparison
from mtcli.metrics import Score
from mtcli.training import Callback, EndEvent, StartEvent, StepEvent, ValidationEvent

if TYPE_CHECKING:
    from mtcli.visualize import RunCurves


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


def alignment_line(report: AlignmentReport) -> str:
    """One line: the attention's argmax alignments against the gold links."""
    line = (f"attention vs. gold alignments ({report.kind}, {report.main_label}, {report.main.pairs} pairs, "
            f"argmax links): AER {report.main.aer:.2f}%, accuracy {report.main.accuracy:.2f}%")
    if report.best_head:
        label, score = report.best_head
        line += f"; best single head ({label}): AER {score.aer:.2f}%, accuracy {score.accuracy:.2f}%"
    return line


def _with_ci(value: float, ci: float | None) -> str:
    return f"{value:.2f} ± {ci:.2f}" if ci is not None else f"{value:.2f}"


def _p_value(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.4f}" + (" *" if p < 0.05 else "")


def comparison_tables(result: Comparison) -> list[Table]:
    """Scores with 95% confidence intervals and p-values against the first run; BLEU by source length."""
    test = "paired bootstrap resampling" if result.test == "bs" else "approximate randomization"
    beam = result.search or (f"beam {result.beam_size}" if result.beam_size else "each run's decode settings")
    scores = Table(title=f"{result.test_set}: {result.sentences} sentences, {beam}; mean ± 95% CI, "
                         f"p-value vs. {result.runs[0].name} ({test}, {result.samples} samples; * p < 0.05)")
    for column in ("run", "backend", "BLEU", "p", "chrF2", "p", "TER", "p", "parameters", "train time", "tok/s"):
        scores.add_column(column, justify="left" if column in ("run", "backend") else "right")
    for run in result.runs:
        s, facts = run.scores, run.facts
        cells = []
        for metric in ("bleu", "chrf", "ter"):
            shown = s.mean[metric] if s.mean[metric] is not None else s.score[metric]
            cells += [_with_ci(shown, s.ci[metric]), _p_value(s.p_value[metric])]
        seconds = facts.get("train_seconds")
        speed = facts.get("tokens_per_s")
        scores.add_row(run.name, run.backend, *cells, f"{facts['parameters']:,}",
                       f"{seconds:,.0f}s" if seconds is not None else "?", f"{speed:,.0f}" if speed else "?")
    lengths = Table(title="BLEU by source length (words)")
    lengths.add_column("source words")
    lengths.add_column("sentences", justify="right")
    for run in result.runs:
        lengths.add_column(run.name, justify="right")
    for i, bucket in enumerate(result.runs[0].buckets):
        row = [run.buckets[i].bleu for run in result.runs]
        lengths.add_row(bucket.label, str(bucket.sentences), *("-" if v is None else f"{v:.2f}" for v in row))
    tables = [scores, lengths]
    aligned = [run for run in result.runs if run.alignment]
    if aligned:
        table = Table(title="attention vs. gold alignments (argmax link per target word)")
        for column in ("run", "attention", "map", "AER %", "accuracy %"):
            table.add_column(column, justify="right" if "%" in column else "left")
        for run in aligned:
            report = run.alignment
            table.add_row(run.name, report.kind, report.main_label, f"{report.main.aer:.2f}",
                          f"{report.main.accuracy:.2f}")
            if report.best_head:
                label, score = report.best_head
                table.add_row("", "", f"best head: {label}", f"{score.aer:.2f}", f"{score.accuracy:.2f}")
        tables.append(table)
    return tables


def curves_table(runs: list[RunCurves]) -> Table:
    """Per run: steps trained, best dev BLEU and its step, training seconds (validation excluded)."""
    table = Table(title="training curves", title_justify="left")
    table.add_column("run")
    table.add_column("backend")
    table.add_column("steps", justify="right")
    table.add_column("best dev BLEU", justify="right")
    table.add_column("at step", justify="right")
    table.add_column("training s", justify="right")
    for run in runs:
        best = run.best
        table.add_row(run.name, run.backend or "?", str(run.last_step), f"{best[0]:.2f}" if best else "-",
                      str(best[1]) if best else "-", f"{run.train_seconds:.1f}")
    return table
