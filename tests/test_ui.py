"""The terminal at 80 and 120 columns, and piped: every figure whole, nothing hard-wrapped; --help in words."""

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from mtcli.analysis import AlignmentReport, AlignmentScore, Comparison, LengthBucket, RunComparison, SystemScores
from mtcli.metrics import Score
from mtcli.training import StartEvent, StepEvent
from mtcli.ui import TrainingDisplay, break_signature, comparison_tables, scores_table
from tests.conftest import tiny_config
from tests.test_cli import invoke

SIGNATURES = {"bleu": ("BLEU", 99.54, "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"),
              "chrf": ("chrF2", 99.66, "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"),
              "ter": ("TER", 0.38, "nrefs:1|case:lc|tok:tercom|norm:no|punct:yes|asian:no|version:2.6.0")}


def render(renderable, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width)
    console.print(renderable)
    return console.file.getvalue().splitlines()


def fits(lines: list[str], width: int) -> None:
    assert lines and max(len(line) for line in lines) <= width, "\n".join(lines)
    assert not any("…" in line for line in lines), "\n".join(lines)  # nothing cut short


def comparison() -> Comparison:
    """Five runs as the README's toy comparison has them: long names, CIs, p-values, four length buckets."""
    def run(name: str, backend: str, bleu: float, p: float | None, alignment=None) -> RunComparison:
        values = {"bleu": bleu, "chrf": 63.2, "ter": 41.6}
        scores = SystemScores(name, values, values, {"bleu": 1.45, "chrf": 0.82, "ter": 1.16},
                              {m: p for m in values})
        buckets = [LengthBucket(1, 10, 204, bleu), LengthBucket(11, 20, 260, 57.73),
                   LengthBucket(21, 30, 254, 30.55), LengthBucket(31, 40, 282, None)]
        return RunComparison(name, backend, {"parameters": 1_135_872, "train_seconds": 137.0,
                                             "tokens_per_s": 17_647.0}, scores, buckets, alignment)
    head = AlignmentReport("transformer cross-attention", AlignmentScore(14.31, 88.38, 1000),
                           "mean of 4 heads, layer 2", ("layer 2 head 3", AlignmentScore(13.81, 88.89, 1000)))
    runs = [run("toy-seq2seq", "seq2seq", 35.86, None),
            run("toy-attention", "attention (additive)", 99.54, 0.001,
                AlignmentReport("additive attention", AlignmentScore(12.88, 89.85, 1000), "attention")),
            run("toy-attention-dot", "attention (dot)", 96.60, 0.001),
            run("toy-attention-general", "attention (general)", 91.36, 0.0312),
            run("toy-transformer", "transformer", 98.78, 0.4, head)]
    return Comparison("toy test", 1000, 5, "bs", 1000, {}, runs)


@pytest.mark.parametrize("width", [80, 120])
def test_compare_tables_keep_every_figure_whole(width):
    lines = [line for table in comparison_tables(comparison()) for line in render(table, width)]
    fits(lines, width)
    text = "\n".join(lines)
    for figure in ("35.86 ± 1.45", "99.54 ± 1.45", "63.20 ± 0.82", "41.60 ± 1.16", "0.0010 *", "0.0312 *",
                   "0.4000", "1,135,872", "137s", "17,647", "12.88", "89.85", "13.81", "88.89"):
        assert figure in text, figure
    for name in ("toy-seq2seq", "toy-attention-general", "toy-transformer", "attention (general)"):
        assert name in text, name  # run names and backends whole too
    assert text.count("57.73") == 5 and text.count("30.55") == 5  # BLEU by length: one figure per run


def test_compare_uses_one_row_per_run_where_there_is_room():
    lines = render(comparison_tables(comparison())[0], 200)
    fits(lines, 200)
    row = next(line for line in lines if "toy-attention-dot" in line)
    assert re.search(r"toy-attention-dot .* attention \(dot\) .* 96\.60 ± 1\.45 .* 0\.0010 \* .* 1,135,872", row)


@pytest.mark.parametrize("width", [80, 120])
def test_score_table_breaks_signatures_between_fields_only(width):
    scores = {key: Score(name, value, signature, "") for key, (name, value, signature) in SIGNATURES.items()}
    lines = render(scores_table(scores, "runs/toy-attention/best.pt on toy test: 1000 sentences, beam 5"), width)
    fits(lines, width)
    cells = [line.split("│")[3].strip() for line in lines if line.startswith("│")]
    assert "".join(cells) == "".join(signature for _, _, signature in SIGNATURES.values())  # nothing lost
    fields = {field for _, _, signature in SIGNATURES.values() for field in signature.split("|")}
    for cell in cells:  # every line of a signature is whole fields: a break only ever follows a '|'
        assert set(cell.rstrip("|").split("|")) <= fields, cell
    assert ("TER" in "\n".join(lines)) and (len(cells) == 3) == (width == 120)


def test_break_signature():
    assert break_signature("a:1|bb:2|c:3", 100) == "a:1|bb:2|c:3"
    assert break_signature("a:1|bb:2|c:3", 8) == "a:1|\nbb:2|c:3"
    assert break_signature("aaaaaaaaaaaa|b", 4) == "aaaaaaaaaaaa|\nb"  # a field longer than the room stays whole


@pytest.mark.parametrize("width", [80, 120])
def test_progress_line_fits(width):
    console = Console(file=io.StringIO(), width=width, force_terminal=True)
    display = TrainingDisplay(console)
    display.on_start(StartEvent(Path("runs/x"), tiny_config(), 1_135_872, 20_000, 500, 100_000, "cpu, bf16", []))
    display.on_step(StepEvent(99_999, 12, 3.12345, 0.000123, 123_456.0, 5_000.0, 100_000))
    lines = render(display.progress.get_renderable(), width)
    display.close()
    fits(lines, width)
    assert len(lines) == 1
    line = lines[0]
    assert re.search(r"step +99999/100000 .*━.* loss 3\.123  lr 1\.23e-04  123,456 tok/s .*ETA", line), line
    assert ("epoch 12" in line) == (width == 120)  # the epoch and elapsed time only where there is room


def test_piped_output_is_not_hard_wrapped(tmp_path, monkeypatch):
    """CliRunner's output is not a terminal, as a pipe: tables at their natural width, long lines whole."""
    from mtcli.cli import Output

    monkeypatch.delenv("COLUMNS", raising=False)
    console = Output(file=io.StringIO())
    scores = {key: Score(name, value, signature, "") for key, (name, value, signature) in SIGNATURES.items()}
    long_title = "runs/" + "a-very-long-run-name/" * 6 + "best.pt on toy test: 1000 sentences, beam 5, fp32, 9.9s"
    console.print(scores_table(scores, long_title))
    text = console.file.getvalue()
    assert long_title in text.splitlines()[0]  # a path is never split across lines
    assert SIGNATURES["ter"][2] in text
    monkeypatch.setenv("COLUMNS", "80")
    assert Output(file=io.StringIO()).width == 80  # COLUMNS still decides


def test_help_reads_in_words_and_version():
    seen = []
    for command in ([], ["train"], ["evaluate"], ["translate"], ["compare"], ["visualize"], ["report"], ["average"],
                    ["data", "fetch"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0, result.output
        seen.append(result.output)
        assert not re.search(r"<(bool|str|int|path|float)[^>]*>|\{\w+\}|list\[", result.output), result.output
    text = "\n".join(seen)
    assert "train [OPTIONS] CONFIG" in text and "compare [OPTIONS] RUN..." in text  # CliRunner calls it "root"
    assert re.search(r"--test +bs\|ar", text) and re.search(r"--beam +N", text)
    assert "data fetch [OPTIONS] DATASET DEST" in text
    result = invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"mtcli \S+ \(torch \S+, sacrebleu \S+, Python \S+\)\n",
                                                  result.output), result.output


@pytest.mark.parametrize("width, cell", [(80, 1), (120, 2)])
def test_a_long_sentence_heatmap_fits_with_narrower_cells(width, cell):
    import torch

    from mtcli.ui import attention_heatmap

    src = [f"w{i}" for i in range(40)] + ["</s>"]
    weights = torch.eye(3, len(src))  # output token i attends to source token i
    lines = render(attention_heatmap(src, ["a", "b", "</s>"], weights, "toy: additive attention"), width)
    fits(lines, width)
    rows = [line for line in lines if line[:5].strip() in ("a", "b", "</s>")]  # labels right-aligned in 5
    assert len(rows) == 3
    for i, row in enumerate(rows):  # every source column is there, `cell` characters wide
        cells = row[5:]
        assert len(cells) == len(src) * cell, row
        assert cells[i * cell:(i + 1) * cell] == "█" * cell and cells.count("█") == cell
