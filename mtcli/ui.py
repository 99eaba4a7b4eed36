"""All terminal rendering (Rich): training progress and validation tables, score tables, attention heatmaps.

The library never prints; the CLI passes its results here. Everything fits an 80-column terminal: a table
too wide for the width it is drawn at switches to a narrower layout (`Fit`), never to cut numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.style import Style
from rich.table import Column, Table
from rich.text import Text

from mtcli.analysis import AlignmentReport, Comparison, RunComparison
from mtcli.metrics import METRICS, Score
from mtcli.training import Callback, EndEvent, PrepareEvent, StartEvent, StepEvent, ValidationEvent

if TYPE_CHECKING:
    from mtcli.visualize import RunCurves


class PreparationProgress:
    """A progress bar per preparation stage (vocabulary training, encoding each corpus); silent when piped."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.console.is_terminal:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
                "{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total or None)
        self.progress.update(self.tasks[stage], completed=done, total=total or None)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Fit:
    """The first of several layouts whose natural width fits the width it is drawn at; else the last one."""

    def __init__(self, *layouts: RenderableType):
        self.layouts = layouts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unbounded = options.update(max_width=10_000)
        for layout in self.layouts[:-1]:
            if Measurement.get(console, unbounded, layout).maximum <= options.max_width:
                yield layout
                return
        yield self.layouts[-1]


WIDE_PROGRESS = 110  # below this many columns the progress line leaves out the epoch and elapsed time


class TrainingDisplay(Callback):
    """A live progress bar (step, loss, lr, tokens/s, ETA) and a table per validation."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.validations: list[ValidationEvent] = []
        self.preparation = PreparationProgress(console)

    def on_prepare(self, e: PrepareEvent) -> None:
        self.preparation(e.stage, e.done, e.total)

    def on_start(self, e: StartEvent) -> None:
        self.preparation.close()
        c, m = e.config, e.config.model
        what = f"resuming at step {e.resumed_step}" if e.resumed_step else "training"
        self.console.print(f"[bold]{c.name}[/]: {what}: [bold]{m.backend}[/] backend, "
                           f"{e.parameters:,} parameters, on {e.device} -> {e.run_dir}/")
        for note in e.notes:
            self.console.print(f"  {note}", style="dim")
        if self.console.is_terminal:
            self.progress = self.progress_bar(e.total_steps, e.resumed_step)
            self.progress.start()

    def progress_bar(self, total: int, completed: int) -> Progress:
        """step N/M, a bar that takes the room left, the stats, ETA; and epoch and elapsed time when wide."""
        self.wide = self.console.width >= WIDE_PROGRESS
        whole = {"table_column": Column(no_wrap=True)}  # the bar gives way, never the figures
        columns = [TextColumn("[bold]step", **whole), MofNCompleteColumn(**whole), BarColumn(bar_width=None),
                   TextColumn("{task.fields[stats]}", **whole)]
        columns += [TimeElapsedColumn(**whole)] if self.wide else []
        progress = Progress(*columns, TextColumn("ETA", **whole), TimeRemainingColumn(**whole), console=self.console,
                            expand=True)
        self.task = progress.add_task("train", total=total or None, completed=completed, stats="")
        return progress

    def close(self) -> None:
        """End the live progress bar (after the last event, or when training stopped with an error)."""
        self.preparation.close()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_step(self, e: StepEvent) -> None:
        stats = f"loss {e.loss:.3f}  lr {e.lr:.2e}  {e.tokens_per_s:,.0f} tok/s"
        if self.progress is not None:
            stats = f"epoch {e.epoch}  {stats}" if self.wide else stats
            self.progress.update(self.task, completed=e.step, stats=stats)
        else:
            total = f"/{e.total_steps}" if e.total_steps else ""
            self.console.print(f"step {e.step}{total}  epoch {e.epoch}  {stats}  {e.elapsed:.0f}s")

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
        self.close()
        best = "no validation"
        if e.best_value is not None:
            best = f"best {e.metric} {e.best_value:.2f} at step {e.best_step}"
        self.console.print(f"[bold]finished[/] ({e.reason.replace('_', ' ')}) at step {e.step}: {best}; "
                           f"{e.train_seconds:.0f}s of training at {e.tokens_per_s:,.0f} target tok/s")
        if e.checkpoint:
            self.console.print(f"best checkpoint: {e.checkpoint}")


def break_signature(signature: str, width: int) -> str:
    """A sacreBLEU signature on lines of at most `width` characters, broken after a '|', never in a field."""
    parts = signature.split("|")
    lines = [""]
    for piece in [part + "|" for part in parts[:-1]] + parts[-1:]:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


class ScoresTable:
    """A title line, then metric, score and sacreBLEU signature; at a narrow width the signatures break
    between their fields."""

    def __init__(self, scores: dict[str, Score], title: str):
        self.scores, self.title = scores, title

    def table(self, signature_width: int | None = None) -> Table:
        table = Table()
        table.add_column("metric", no_wrap=True)
        table.add_column("score", justify="right", no_wrap=True)
        table.add_column("signature", style="dim", no_wrap=True)
        for score in self.scores.values():
            signature = score.signature if signature_width is None else break_signature(score.signature,
                                                                                         signature_width)
            table.add_row(score.name, f"{score.score:.2f}", signature)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.title, style="italic")  # above, not inside: a title inside wraps at the table's width
        table = self.table()
        natural = Measurement.get(console, options.update(max_width=10_000), table).maximum
        if natural <= options.max_width:
            yield table
            return
        longest = max(len(score.signature) for score in self.scores.values())
        yield self.table(max(options.max_width - (natural - longest), 20))


def scores_table(scores: dict[str, Score], title: str) -> ScoresTable:
    return ScoresTable(scores, title)


SHADES = " ░▒▓█"


VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _color(weight: float) -> str:
    """Viridis-like colour for a weight in [0, 1], as in the PNG figures."""
    x = min(max(weight, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    a, b, f = VIRIDIS[i], VIRIDIS[i + 1], x - i
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return f"rgb({r},{g},{bl})"


def _cell(weight: float, width: int = 2) -> Text:
    """`width` characters per attention weight: a denser block and a brighter colour for more weight."""
    shade = SHADES[round(min(max(weight, 0.0), 1.0) * (len(SHADES) - 1))]  # nearest of 0, .25, .5, .75, 1
    return Text(shade * width, style=Style(color=_color(weight), bgcolor=_color(0.0)))


def _heatmap_table(src_tokens: list[str], tgt_tokens: list[str], weights: torch.Tensor, width: int) -> Table:
    table = Table(box=None, padding=(0, 0), show_edge=False)
    table.add_column("", justify="right", no_wrap=True)
    for token in src_tokens:
        table.add_column("\n".join(token[:12]), width=width, justify="center", vertical="bottom", no_wrap=True)
    for token, row in zip(tgt_tokens, weights.tolist()):
        table.add_row(Text(token + " ", style="bold"), *[_cell(w, width) for w in row])
    return table


def attention_heatmap(src_tokens: list[str], tgt_tokens: list[str], weights: torch.Tensor, title: str) -> Group:
    """Source tokens across (written top-down), output tokens down; one cell per attention weight, two
    characters wide, or one where a long sentence would not fit the terminal that way."""
    assert weights.shape == (len(tgt_tokens), len(src_tokens)), (weights.shape, len(tgt_tokens), len(src_tokens))
    tables = [_heatmap_table(src_tokens, tgt_tokens, weights, width) for width in (2, 1)]
    legend = Text.assemble("weight ", *[(f" {SHADES[i] * 2} {i / (len(SHADES) - 1):.2g}", Style(
        color=_color(i / (len(SHADES) - 1)), bgcolor=_color(0.0))) for i in range(len(SHADES))])
    return Group(Text(title, style="bold"), Fit(*tables), legend)


def alignment_line(report: AlignmentReport) -> str:
    """One line: the attention's argmax alignments against the gold links."""
    what = report.kind if report.best_head is None else f"{report.kind}, {report.main_label}"  # one map: no choice
    line = (f"attention vs. gold alignments ({what}, {report.main.pairs} pairs, "
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


def _numbers(table: Table, *names: str) -> None:
    """Right-aligned columns that never wrap or shrink: a number is whole or the layout changes."""
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)


def _score_cells(run: RunComparison, metric: str) -> tuple[str, str]:
    s = run.scores
    shown = s.mean[metric] if s.mean[metric] is not None else s.score[metric]
    return _with_ci(shown, s.ci[metric]), _p_value(s.p_value[metric])


def _facts_cells(run: RunComparison) -> list[str]:
    seconds, speed = run.facts.get("train_seconds"), run.facts.get("tokens_per_s")
    return [f"{run.facts['parameters']:,}", f"{seconds:,.0f}s" if seconds is not None else "?",
            f"{speed:,.0f}" if speed else "?"]


def _scores_layouts(result: Comparison) -> Fit:
    """One row per run with every column; or, narrower, a row per run and metric, then the run facts."""
    metrics = list(result.runs[0].scores.score)
    wide = Table()
    wide.add_column("run")
    wide.add_column("backend")
    _numbers(wide, *[c for m in metrics for c in (METRICS[m].label, "p")], "parameters", "train time", "tok/s")
    for run in result.runs:
        wide.add_row(run.name, run.backend, *[c for m in metrics for c in _score_cells(run, m)], *_facts_cells(run))
    narrow = Table()
    narrow.add_column("run", overflow="fold")
    narrow.add_column("metric", no_wrap=True)
    _numbers(narrow, "mean ± 95% CI", "p")
    for run in result.runs:
        for i, metric in enumerate(metrics):
            first = (run.name, run.backend)[i] if i < 2 else ""
            narrow.add_row(Text(first, style="dim" if i else ""), METRICS[metric].label, *_score_cells(run, metric),
                           end_section=i == len(metrics) - 1)
    facts = Table()
    facts.add_column("run", overflow="fold")
    _numbers(facts, "parameters", "train time", "tok/s")
    for run in result.runs:
        facts.add_row(run.name, *_facts_cells(run))
    return Fit(wide, Group(narrow, facts))


def _length_layouts(result: Comparison) -> Fit:
    """Buckets down and runs across; or runs down and buckets across; or one row per bucket and run."""
    title, first = "BLEU by source length (words)", result.runs[0].buckets
    bleu = [["-" if b.bleu is None else f"{b.bleu:.2f}" for b in run.buckets] for run in result.runs]
    by_bucket = Table(title=title)
    by_bucket.add_column("source words", no_wrap=True)
    _numbers(by_bucket, "sentences", *[run.name for run in result.runs])
    for i, bucket in enumerate(first):
        by_bucket.add_row(bucket.label, str(bucket.sentences), *[row[i] for row in bleu])
    by_run = Table(title=f"{title}; sentences in brackets")
    by_run.add_column("run", overflow="fold")
    _numbers(by_run, *[f"{b.label} ({b.sentences})" for b in first])
    for run, row in zip(result.runs, bleu):
        by_run.add_row(run.name, *row)
    rows = Table(title=title)
    rows.add_column("source words", no_wrap=True)
    _numbers(rows, "sentences")
    rows.add_column("run", overflow="fold")
    _numbers(rows, "BLEU")
    for i, bucket in enumerate(first):
        for k, (run, row) in enumerate(zip(result.runs, bleu)):
            rows.add_row(bucket.label if k == 0 else "", str(bucket.sentences) if k == 0 else "", run.name, row[i],
                         end_section=k == len(result.runs) - 1)
    return Fit(by_bucket, by_run, rows)


def comparison_tables(result: Comparison) -> list[RenderableType]:
    """Scores with 95% confidence intervals and p-values against the first run; BLEU by source length;
    attention vs. gold alignments. Each in the widest layout that fits the terminal."""
    test = "paired bootstrap resampling" if result.test == "bs" else "approximate randomization"
    beam = result.search or (f"beam {result.beam_size}" if result.beam_size else "each run's decode settings")
    title = Text(f"{result.test_set}: {result.sentences} sentences, {beam}; mean ± 95% CI, "
                 f"p-value vs. {result.runs[0].name} ({test}, {result.samples} samples; * p < 0.05)", style="italic")
    tables: list[RenderableType] = [Group(title, _scores_layouts(result)), _length_layouts(result)]
    aligned = [run for run in result.runs if run.alignment]
    if aligned:
        table = Table(title="attention vs. gold alignments (argmax link per target word)")
        for column in ("run", "attention", "map"):
            table.add_column(column, overflow="fold" if column == "run" else "ellipsis")
        _numbers(table, "AER %", "accuracy %")
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
