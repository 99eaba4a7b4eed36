"""The `mtcli` command line: each command parses, calls one library function and renders the result.

User mistakes (MtcliError, bad options) are printed as one line on stderr with exit code 1.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, ConsoleDimensions
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from mtcli.distributed import world_from_env
from mtcli.errors import MtcliError, ReportedElsewhere
from mtcli.files import check_output_file, check_output_folder

if TYPE_CHECKING:
    from mtcli.checkpoint import Bundle
    from mtcli.config import DecodeConfig

try:  # Typer's usage errors derive from click's ClickException: vendored in Typer >= 0.20, a dependency before
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException


class PlainArgument(TyperArgument):
    """An argument shown by its name alone: `CONFIG`, `[RUN]...` (no `<path>` type, no `{config}`)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or self.name.upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]


class PlainOption(TyperOption):
    """A flag shown alone (no `<bool>`); an option with its metavar (`--test bs|ar`), else a word for its type."""

    TYPES = {"int": "N", "int range": "N", "float": "X", "float range": "X", "path": "PATH", "str": "TEXT"}

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        if self.metavar:
            return self.metavar
        raw = str(super().display_type_rich(ctx)).strip("<>").removesuffix("...")
        return self.TYPES.get(raw, raw.upper()) + ("..." if self.nargs != 1 else "")


class PlainHelp:
    """--help in plain words: parameters as above, each paragraph of a docstring joined into one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = re.sub(r"(?<!\n)\n(?!\n)", " ", inspect.cleandoc(self.help))

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            for typer_class, plain in ((TyperArgument, PlainArgument), (TyperOption, PlainOption)):
                if type(param) is typer_class:
                    param.__class__ = plain
        return params


class Command(PlainHelp, TyperCommand):
    """Every mtcli command (`@app.command(cls=Command)`)."""


class Group(PlainHelp, TyperGroup):
    """A group of commands (`mtcli data`)."""


class OneLineErrors(Group):
    """Usage errors as one line and exit code 1, like every other user mistake."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
            typer.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(1)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Machine-translation experiments: train, evaluate, translate and visualize "
                       "Seq2seq, attention and Transformer models.")


def version_text() -> str:
    """mtcli's version and the versions that decide its results (read from the installed packages)."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"
    return (f"mtcli {version('mtcli')} (torch {version('torch')}, sacrebleu {version('sacrebleu')}, "
            f"Python {sys.version.split()[0]})")


def show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def options(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=show_version, help="Print the version and exit.")] = False) -> None:
    """Machine-translation experiments: train, evaluate, translate and visualize Seq2seq, attention and
    Transformer models."""


class Output(Console):
    """A Rich console that lays tables out at their natural width when its output is not a terminal (a pipe,
    a file), instead of hard-wrapping them at 80 columns; COLUMNS still sets a width."""

    PIPED_WIDTH = 1000

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(self.PIPED_WIDTH, size.height)
        return size


stdout = Output()
stderr = Output(stderr=True)


def user_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ReportedElsewhere:
            raise typer.Exit(1) from None
        except MtcliError as exc:
            message = str(exc)
        except OSError as exc:  # a file operation without its own message: still one line, naming the file
            message = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        world = world_from_env()  # under torchrun, say which process it was
        typer.echo(f"error: {message}" if world.main else f"error (rank {world.rank}): {message}", err=True)
        raise typer.Exit(1)
    return wrapper


def acknowledge_stop(name: str) -> None:
    """Said at once when SIGINT/SIGTERM arrives during training (rank 0 speaks for all processes)."""
    if world_from_env().main:
        os.write(2, f"\n{name}: stopping after the update or validation under way, with a final "
                    "checkpoint\n".encode())


RunArg = Annotated[str | None, typer.Argument(
    metavar="RUN", help="Run folder or checkpoint file; default: the most recent run under runs/.", show_default=False)]

# ---------------------------------------------------------------- decoding options, alike on every command that
# decodes: each overrides one key of the run's decode section (experiments/reference.yaml lists them all)

BeamOpt = Annotated[int | None, typer.Option(
    "--beam", min=1, metavar="N", show_default=False,
    help="Beam search with N hypotheses per sentence (1 = greedy search); default: the run's decode section.")]
SamplingOpt = Annotated[bool, typer.Option(
    "--sampling", help="Sample the output instead of searching (decode.temperature, top_k, top_p, seed).")]
LengthPenaltyOpt = Annotated[float | None, typer.Option(
    "--length-penalty", metavar="ALPHA", show_default=False,
    help="Rank by log-probability / ((5 + length) / 6) ** ALPHA (0 = plain log-probability).")]
MaxLenOpt = Annotated[int | None, typer.Option("--max-len", min=1, metavar="N", show_default=False,
                                               help="At most N output tokens.")]
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", metavar="fp32|bf16", show_default=False,
    help="Search in fp32 or under bf16 autocast (faster on CPUs with AVX-512 BF16); default: the config's.")]
DecodeSetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="decode.KEY=VALUE", show_default=False,
    help="Override any key of the run's decode section (repeatable), e.g. --set decode.min_len=3.")]


def decode_for(bundle: Bundle, overrides: list[str] | None, precision: str | None, **options: Any) -> DecodeConfig:
    """The run's decode section with this command line's overrides."""
    from mtcli.inference import decode_request

    if precision not in (None, "fp32", "bf16"):
        raise MtcliError(f"--precision: expected fp32 or bf16, got {precision!r}")
    return decode_request(bundle.config.decode, "command line", overrides=overrides or [], precision=precision,
                          **options)


def load(target: str | None, announce: bool = True) -> Bundle:
    """The checkpoint of a run folder or file; with none given, the newest run's (and say which)."""
    from mtcli.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(target)
    if target is None and announce:
        stderr.print(f"using {path}", style="dim", soft_wrap=True)
    return load_checkpoint(path)


def load_models(targets: list[str] | None, announce: bool = True) -> Bundle:
    """One checkpoint, or several decoding as one ensemble."""
    from mtcli.inference import ensemble

    return ensemble([load(target, announce) for target in targets or [None]])


@app.command(cls=Command)
@user_errors
def train(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML experiment file.", show_default=False)],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="SECTION.KEY=VALUE", help="Override a config key (repeatable).")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Start over even if the run has checkpoints.")] = False,
) -> None:
    """Train a model; validates with sacreBLEU and keeps checkpoints in runs/<name>/ (resumes if one is there).

    Ctrl-C or SIGTERM stops at the next update with a final checkpoint (exit code 130 or 143).
    For several processes or machines: torchrun --nproc_per_node N -m mtcli train CONFIG.
    """
    from mtcli.config import load_config
    from mtcli.runlog import RunLog
    from mtcli.training import train as run_training
    from mtcli.ui import TrainingDisplay

    cfg = load_config(config, overrides or [])
    display = TrainingDisplay(stdout)
    try:
        end = run_training(cfg, [RunLog(cfg.run_path), display], restart=restart, on_signal=acknowledge_stop)
    finally:
        display.close()  # the live progress bar ends before any error line
    if end.reason == "interrupted":
        saved = f"saved {end.saved}" if end.saved else "nothing saved yet"
        if world_from_env().main:  # under torchrun: rank 0 saved and speaks for all
            stderr.print(f"stopped by {end.signal or 'an interrupt'} at step {end.step}: {saved}; "
                         "run the same command to resume", soft_wrap=True)
        raise typer.Exit(143 if end.signal == "SIGTERM" else 130)


@app.command(cls=Command)
@user_errors
def evaluate(
    runs: Annotated[list[str] | None, typer.Argument(
        metavar="RUN", show_default=False,
        help="Run folder or checkpoint file; default: the most recent run under runs/. Several: one ensemble "
             "(same vocabularies).")] = None,
    src: Annotated[Path | None, typer.Option("--src", help="Source file (one sentence per line).")] = None,
    ref: Annotated[Path | None, typer.Option("--ref", help="Reference file, line-parallel to --src.")] = None,
    beam: BeamOpt = None,
    sampling: SamplingOpt = False,
    length_penalty: LengthPenaltyOpt = None,
    max_len: MaxLenOpt = None,
    precision: PrecisionOpt = None,
    overrides: DecodeSetOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the translations here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Score a model with every metric of mtcli/metrics.py (sacreBLEU's BLEU, chrF, chrF++, TER, with signatures);
    default: the config's test set."""
    from mtcli.evaluation import evaluate as run_evaluation
    from mtcli.evaluation import test_set
    from mtcli.ui import scores_table

    if output is not None:
        check_output_file(output)  # before the decoding, not after it
    bundle = load_models(runs, announce=not as_json)
    decode = decode_for(bundle, overrides, precision, beam=beam, sampling=sampling, length_penalty=length_penalty,
                        max_len=max_len)
    result = run_evaluation(bundle, test_set(bundle, src, ref), decode)
    if output is not None:
        from mtcli.files import atomic_write_text

        atomic_write_text(output, "".join(h + "\n" for h in result.hypotheses))
    if as_json:
        typer.echo(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    title = (f"{result.checkpoint} on {result.test_set}: {result.sentences} sentences, "
             f"{result.search}, {result.precision}, {result.seconds:.1f}s")
    stdout.print(scores_table(result.scores, title))
    if result.alignment is not None:
        from mtcli.ui import alignment_line

        stdout.print(alignment_line(result.alignment))  # wrapped between words at a terminal, whole in a pipe


CHUNK_LINES = 1024  # lines of a file or a fast pipe sorted by length and translated together


@app.command(cls=Command)
@user_errors
def translate(
    text: Annotated[str | None, typer.Argument(metavar="TEXT", help="A sentence to translate; else --input or stdin.",
                                                  show_default=False)] = None,
    checkpoints: Annotated[list[str] | None, typer.Option(
        "--checkpoint", "-c", metavar="RUN", show_default=False,
        help="Run folder or checkpoint; default: the latest run. Repeat it for an ensemble (same vocabularies).")
    ] = None,
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="File with one sentence per line.")] = None,
    beam: BeamOpt = None,
    n_best: Annotated[int | None, typer.Option(
        "--n-best", min=1, metavar="N", show_default=False,
        help="Outputs per sentence: the N best of the beam, or N samples; each line starts with the input's "
             "line number.")] = None,
    sampling: SamplingOpt = False,
    temperature: Annotated[float | None, typer.Option("--temperature", metavar="T", show_default=False,
                                                      help="Sampling: < 1 sharper, > 1 flatter.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0, metavar="K", show_default=False,
                                              help="Sampling: from the K most probable tokens only.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", metavar="P", show_default=False,
                                                help="Sampling: from the smallest set of tokens with probability "
                                                     "P (nucleus).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", show_default=False,
                                             help="Sampling: the same seed gives the same samples.")] = None,
    no_repeat_ngram: Annotated[int | None, typer.Option(
        "--no-repeat-ngram", min=0, metavar="N", show_default=False,
        help="No N-gram twice in an output.")] = None,
    length_penalty: LengthPenaltyOpt = None,
    max_len: MaxLenOpt = None,
    precision: PrecisionOpt = None,
    overrides: DecodeSetOpt = None,
    scores: Annotated[bool, typer.Option(
        "--scores", help="Add tab-separated columns: the score (log-probability / length penalty) and the "
                         "log-probability.")] = False,
    token_scores: Annotated[bool, typer.Option("--token-scores", help="Also each token's log-probability.")] = False,
    alignment: Annotated[bool, typer.Option(
        "--alignment", help="Add the word alignment from the attention, as Pharaoh i-j links.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per input line (JSON Lines): outputs, scores, tokens.")] = False,
    score_ref: Annotated[Path | None, typer.Option(
        "--score-ref", metavar="FILE", show_default=False,
        help="Instead of translating, score these translations (one per input line): log-probability and "
             "perplexity.")] = None,
) -> None:
    """Translate a sentence, a file or stdin, one output line per input line: lines are translated and
    written as they arrive, so it works in a pipe, and at a terminal it reads lines until Ctrl-D."""
    from mtcli import inputs
    from mtcli.inference import translator

    if text is not None and input_file is not None:
        raise MtcliError("give a sentence or --input FILE, not both")
    if text is not None:
        source = iter([[inputs.argument_text(text)]])
    elif input_file is not None:
        source = inputs.chunks(inputs.file_lines(input_file), CHUNK_LINES)
    else:
        prompt = (lambda: (sys.stderr.write("> "), sys.stderr.flush())) if sys.stdin.isatty() else None
        source = inputs.stream_chunks(inputs.binary_stdin(sys.stdin), "stdin", CHUNK_LINES, prompt)
    bundle = load_models(checkpoints)
    decode = decode_for(bundle, overrides, precision, beam=beam, sampling=sampling, n_best=n_best,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        no_repeat_ngram_size=no_repeat_ngram, length_penalty=length_penalty, max_len=max_len)
    if alignment and not bundle.model.has_attention:
        raise MtcliError(f"--alignment: the {bundle.config.model.backend} backend has no attention to align with")
    shown = {"scores": scores, "token_scores": token_scores, "alignment": alignment}
    with _output_closed_quietly():
        if score_ref is None:
            _write_translations(translator(bundle, decode), source, decode.n_best, as_json, shown)
        else:
            _write_reference_scores(translator(bundle, decode), source, score_ref, as_json, token_scores)


def _emit(lines: list[str]) -> None:
    """Write and flush: in a pipe, each chunk's translations go out as soon as they are made."""
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


@contextlib.contextmanager
def _output_closed_quietly() -> Any:
    """A reader that stops early (`| head`) ends the command quietly, as Ctrl-C does at a terminal."""
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _write_translations(translating: Any, source: Any, n_best: int, as_json: bool, shown: dict[str, bool]) -> None:
    from mtcli.inference import json_line, text_lines

    number = 0
    for chunk in source:
        lines = []
        for result in translating.translate(chunk, alignment=shown["alignment"]):
            number += 1
            lines += [json_line(result, number)] if as_json else text_lines(result, number, n_best, **shown)
        _emit(lines)


def _write_reference_scores(translating: Any, source: Any, path: Path, as_json: bool, token_scores: bool) -> None:
    from mtcli.errors import DataError
    from mtcli.inference import json_line, reference_line
    from mtcli.inputs import file_lines

    sources = [line for chunk in source for line in chunk]
    references = file_lines(path)
    if len(references) != len(sources):
        raise DataError(f"{path}: {len(references)} lines, but the input has {len(sources)}: "
                        "give one reference per input line")
    results = translating.score(sources, references)
    _emit([json_line(r, i, s) if as_json else reference_line(r, token_scores)
           for i, (s, r) in enumerate(zip(sources, results), start=1)])


@app.command(cls=Command)
@user_errors
def visualize(
    runs: Annotated[list[str] | None, typer.Argument(
        metavar="RUN", help="Run folder or checkpoint file; default: the most recent run under runs/. "
                           "Several run folders with --curves.", show_default=False)] = None,
    sentence: Annotated[str | None, typer.Option("--sentence", "-s",
                                                    help="Source sentence; default: the first test sentence.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Also save a figure (.png/.svg/.pdf); with --all: the folder for the figures.")] = None,
    beam: BeamOpt = None,
    sampling: SamplingOpt = False,
    length_penalty: LengthPenaltyOpt = None,
    max_len: MaxLenOpt = None,
    precision: PrecisionOpt = None,
    overrides: DecodeSetOpt = None,
    layer: Annotated[int | None, typer.Option(min=1, help="Transformer: decoder layer (default: last).")] = None,
    head: Annotated[int | None, typer.Option(min=1, help="Transformer: one head (default: mean of heads).")] = None,
    grid: Annotated[str | None, typer.Option(
        "--grid", metavar="cross|encoder|decoder", show_default=False,
        help="Transformer: one figure (-o) with a heatmap per layer (rows) and head (columns) of the "
             "cross-attention, encoder self-attention or decoder self-attention.")] = None,
    all_dev: Annotated[int | None, typer.Option(
        "--all", min=1, metavar="N", show_default=False,
        help="One figure per sentence for the first N dev sentences, into the folder -o DIR (dev-0001.png, ...).")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", metavar="png|svg|pdf", show_default=False,
                                            help="With --all: the figures' format (default png).")] = None,
    curves: Annotated[bool, typer.Option(
        "--curves", help="Training curves of one or more runs from metrics.jsonl: a table, and with -o a figure "
                         "(loss and dev BLEU by step, dev BLEU by training time).")] = False,
) -> None:
    """Show the attention of one translated sentence as a heatmap in the terminal (and as a figure);
    every layer and head of a Transformer (--grid); figures for the dev set (--all); training curves (--curves)."""
    from mtcli.visualize import attention_views, check_options, default_sentence, dev_sentences, figure_paths

    runs = runs or []
    check_options(runs, curves=curves, grid=grid, all_dev=all_dev, output=output, sentence=sentence, beam=beam,
                  layer=layer, head=head, fmt=fmt)
    if output is not None:
        (check_output_folder if all_dev is not None else check_output_file)(output)
    if curves:
        from mtcli.plots import curves_figure, save_figure
        from mtcli.ui import curves_table
        from mtcli.visualize import training_curves

        found = training_curves(runs or [None])
        if not runs:
            stderr.print(f"using {found[0].path.parent}", style="dim", soft_wrap=True)
        stdout.print(curves_table(found))
        if output is not None:
            stdout.print(f"saved {save_figure(curves_figure(found), output)}", soft_wrap=True)
        return
    bundle = load(runs[0] if runs else None)
    if not bundle.model.has_attention:
        stdout.print(f"{bundle.path}: the {bundle.config.model.backend} backend has no attention "
                     "(its decoder sees one fixed context vector): nothing to show", soft_wrap=True)
        return
    if all_dev is not None:
        sentences = dev_sentences(bundle, all_dev)
    else:
        sentences = [default_sentence(bundle) if sentence is None else sentence]
    decode = decode_for(bundle, overrides, precision, beam=beam, sampling=sampling, length_penalty=length_penalty,
                        max_len=max_len)
    views = attention_views(bundle, sentences, decode, layer, head, grid)
    from mtcli.plots import save_figure, view_figure

    if all_dev is not None:
        for view, path in zip(views, figure_paths(output, len(views), fmt)):
            stdout.print(f"saved {save_figure(view_figure(view), path)}: {view.translation}", soft_wrap=True)
        fewer = ", all the dev split has" if len(views) < all_dev else ""
        stdout.print(f"{len(views)} dev sentences{fewer}: {len(views)} figures in {output} ({views[0].title})",
                     soft_wrap=True)
        return
    view = views[0]
    if grid is None:
        from mtcli.ui import attention_heatmap

        stdout.print(attention_heatmap(view.src_tokens, view.tgt_tokens, view.weights, view.title))
    else:
        layers, heads = view.weights.shape[:2]
        stdout.print(f"{view.title}: {layers} layer(s) x {heads} head(s)", soft_wrap=True)
    stdout.print(f"translation: {view.translation}", soft_wrap=True)
    if output is not None:
        stdout.print(f"saved {save_figure(view_figure(view), output)}", soft_wrap=True)


@app.command(cls=Command)
@user_errors
def compare(
    runs: Annotated[list[str], typer.Argument(metavar="RUN", help="Run folders or checkpoints; the first is the "
                                              "baseline.", show_default=False)],
    src: Annotated[Path | None, typer.Option("--src", help="Source file (one sentence per line).")] = None,
    ref: Annotated[Path | None, typer.Option("--ref", help="Reference file, line-parallel to --src.")] = None,
    beam: BeamOpt = None,
    sampling: SamplingOpt = False,
    length_penalty: LengthPenaltyOpt = None,
    max_len: MaxLenOpt = None,
    precision: PrecisionOpt = None,
    overrides: DecodeSetOpt = None,
    test: Annotated[str, typer.Option("--test", metavar="bs|ar", help="Paired test: bs (bootstrap resampling) "
                                                                     "or ar (approximate randomization).")] = "bs",
    samples: Annotated[int, typer.Option("--samples", min=0, help="Resamples or trials; 0 = sacrebleu's "
                                                                  "default (1000 bs, 10000 ar).")] = 0,
    bucket_width: Annotated[int, typer.Option("--bucket-width", min=1, help="Source words per length bucket.")] = 10,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save the BLEU-by-length figure "
                                                                       "(.png/.svg/.pdf).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Compare runs on one test set: every metric (BLEU, chrF, chrF++, TER) with 95% confidence intervals,
    paired significance against the first run, BLEU by source length, and attention vs. gold alignments on the
    toy pair."""
    from mtcli.analysis import compare_runs
    from mtcli.evaluation import test_set

    if test not in ("bs", "ar"):
        raise MtcliError(f"--test {test}: use bs (paired bootstrap resampling) or ar (approximate randomization)")
    if output is not None:
        from mtcli.plots import check_figure_path

        check_output_file(check_figure_path(output))
    bundles = [load(run) for run in runs]
    data = test_set(bundles[0], src, ref)
    if src is None:
        for bundle in bundles[1:]:
            if test_set(bundle, None, None).tgt != data.tgt:
                raise MtcliError(f"{bundle.path}: its config's test set differs from {bundles[0].path}'s; "
                                 "give --src and --ref to compare them on one test set")
    decodes = [decode_for(b, overrides, precision, beam=beam, sampling=sampling, length_penalty=length_penalty,
                          max_len=max_len) for b in bundles]
    result = compare_runs(bundles, data, decodes, test, samples, bucket_width)
    if output is not None:
        from mtcli.plots import save_length_figure

        save_length_figure(result, output)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    from mtcli.ui import comparison_tables

    for table in comparison_tables(result):
        stdout.print(table)
    if output is not None:
        stdout.print(f"saved {output}", soft_wrap=True)


@app.command(cls=Command)
@user_errors
def report(
    run: RunArg = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file; default: RUN/report.html.")] = None,
    beam: BeamOpt = None,
    sampling: SamplingOpt = False,
    length_penalty: LengthPenaltyOpt = None,
    max_len: MaxLenOpt = None,
    precision: PrecisionOpt = None,
    overrides: DecodeSetOpt = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Sample translations with heatmaps.")] = 3,
) -> None:
    """Write one self-contained HTML report of a run: config, environment, data hashes, scores with
    signatures, learning curves, BLEU by length, sample translations with their attention."""
    from mtcli.report import write_report

    if output is not None:
        check_output_file(output)
    bundle = load(run)
    decode = decode_for(bundle, overrides, precision, beam=beam, sampling=sampling, length_penalty=length_penalty,
                        max_len=max_len)
    path = write_report(bundle, output or check_output_file(bundle.path.parent / "report.html"), decode, samples)
    stdout.print(f"wrote {path}", soft_wrap=True)


data_app = typer.Typer(cls=Group, no_args_is_help=True, help="Corpora: fetch them, prepare them for training.")
app.add_typer(data_app, name="data")


@data_app.command("prepare", cls=Command)
@user_errors
def data_prepare(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML experiment file.", show_default=False)],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="SECTION.KEY=VALUE", help="Override a config key (repeatable).")] = None,
) -> None:
    """Prepare a config's training data ahead of training: the vocabulary and every training corpus's token
    ids, kept in the prepared-data cache (data.cache_dir, else $MTCLI_CACHE, else ~/.cache/mtcli/prepared),
    where train, a resumed run, other configs on the same data and every torchrun process find them."""
    import time

    from mtcli.config import load_config
    from mtcli.data.dataset import prepare_train
    from mtcli.data.prepared import cache_root
    from mtcli.ui import PreparationProgress

    cfg = load_config(config, overrides or [])
    start, progress = time.perf_counter(), PreparationProgress(stderr)
    try:
        _, _, train_set, notes = prepare_train(cfg.data, progress=progress)
    finally:
        progress.close()
    for note in notes:
        stdout.print(note, soft_wrap=True, highlight=False)
    stdout.print(f"{len(train_set):,} training pairs ready in {cache_root(cfg.data)} "
                 f"({time.perf_counter() - start:.1f}s)", soft_wrap=True, highlight=False)


@data_app.command("fetch", cls=Command)
@user_errors
def data_fetch(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="The corpus: multi30k.", show_default=False)],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Folder for <split>.<lang> files (data.dir in a config).",
                                         show_default=False)],
    langs: Annotated[str, typer.Option("--langs", help="Comma-separated languages (de, en, fr, cs).")] = "de,en",
    source: Annotated[Path | None, typer.Option("--from", help="Copy from this local folder instead of "
                                                               "downloading (plain or .gz files).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Base URL of the files (default: the Multi30k "
                                                          "repository on GitHub).")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Download cache (default: "
                                                               "~/.cache/mtcli/multi30k).")] = None,
) -> None:
    """Fetch a corpus into DEST, every file checked against its SHA-256; downloads are cached, --from is
    offline. Then train with --set data.dir=DEST."""
    from mtcli.data.fetch import MULTI30K_URL, fetch_multi30k

    if dataset.lower() != "multi30k":
        raise MtcliError(f"{dataset}: unknown corpus (known: multi30k)")
    chosen = tuple(lang.strip() for lang in langs.split(",") if lang.strip())
    check_output_folder(dest)  # before any download
    files = fetch_multi30k(dest, chosen, source, url or MULTI30K_URL, cache,
                           report=lambda line: stdout.print(line, soft_wrap=True))
    stdout.print(f"{len(files)} files in {dest}, all checksums ok", soft_wrap=True)


@app.command(cls=Command)
@user_errors
def average(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder.", show_default=False)],
    last: Annotated[int | None, typer.Option("--last", min=1, help="Average the newest N step checkpoints.")] = None,
    best: Annotated[int | None, typer.Option("--best", min=1, help="Average the N best by the run's "
                                                                   "train.best_metric.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Default: RUN/average.pt.")] = None,
) -> None:
    """Average the weights of a run's last or best N checkpoints into one checkpoint (evaluate or translate
    with it like any other)."""
    from mtcli.checkpoint import average_checkpoints, choose_for_average

    if output is not None:
        check_output_file(output)
    paths = choose_for_average(run, last, best)
    out = average_checkpoints(paths, check_output_file(output or run / "average.pt"))
    stdout.print(f"wrote {out}: the mean of {', '.join(p.name for p in paths)}", soft_wrap=True)


def main() -> None:
    app()
