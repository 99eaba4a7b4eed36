"""`mtcli visualize` beyond one heatmap: Transformer grids, beam outputs, the dev set in a folder, training curves.

Tiny real runs on the toy pair (trained once per module, a few seconds); figures are checked by content:
PNG signatures and sizes, and in SVG files (text kept as text) the panels, titles and tick labels.
"""

import html
import json
import re
from pathlib import Path

import pytest
import torch

from mtcli.checkpoint import load_checkpoint
from mtcli.data.batching import make_example
from mtcli.data.tokenizers import BOS
from mtcli.inference import decode_examples, decode_request, translator
from mtcli.visualize import interpolate, parse_metrics
from tests.conftest import BACKENDS, tiny_dict, train_tiny_runs
from tests.test_cli import invoke

PNG = b"\x89PNG\r\n\x1a\n"
ENCODER_LAYERS, DECODER_LAYERS, HEADS = 2, 3, 2  # all different, so rows, columns and kinds cannot be mixed up
SENTENCE = "the small dog sees two red birds near the river"
DEV_SIZE = 6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """runs/toy-{seq2seq,attention,transformer}, trained for 20 steps with validations at 10 and 20 (6 dev pairs)."""
    root = tmp_path_factory.mktemp("visualize")
    configs = {}
    for backend in BACKENDS:
        data = tiny_dict(backend, model={"encoder_layers": ENCODER_LAYERS, "decoder_layers": DECODER_LAYERS,
                                         "heads": HEADS})
        data["name"] = f"toy-{backend}"
        data["data"]["toy"]["dev_size"] = DEV_SIZE
        configs[backend] = data
    train_tiny_runs(root, configs, "--set", "train.max_steps=20", "--set", "train.validate_every=10",
                    "--set", "train.log_every=5")
    return root


def one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def svg_texts(path: Path) -> list[str]:
    """The text elements of an SVG figure, in drawing order."""
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())]


def svg_count(path: Path, group: str) -> int:
    """How many axes_N / legend_N groups the figure has."""
    return len(set(re.findall(rf'<g id="{group}_\d+"', path.read_text())))


def assert_png(path: Path, min_size: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > min_size, (path, len(data))


def translation_tokens(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("translation:"))
    return line.removeprefix("translation:").split() + ["</s>"]


# ---------------------------------------------------------------- Transformer grids


@pytest.mark.parametrize("kind, rows, columns", [("cross", "output", "source"), ("encoder", "source", "source"),
                                                 ("decoder", "output", "decoder input")])
def test_grid_has_one_panel_per_layer_and_head(in_workdir, tmp_path, kind, rows, columns):
    svg = tmp_path / f"{kind}.svg"
    result = invoke("visualize", "runs/toy-transformer", "--grid", kind, "-s", SENTENCE, "--beam", "1", "-o", svg)
    assert result.exit_code == 0, result.output
    layers = ENCODER_LAYERS if kind == "encoder" else DECODER_LAYERS
    assert f"{layers} layer(s) x {HEADS} head(s)" in result.output and f"saved {svg}" in result.output
    texts = svg_texts(svg)
    titles = sorted(t for t in texts if t.startswith("layer "))
    assert titles == sorted(f"layer {lay}, head {h}" for lay in range(1, layers + 1) for h in range(1, HEADS + 1))
    assert svg_count(svg, "axes") == layers * HEADS + 1  # the panels and one shared colour bar
    source = SENTENCE.split() + ["</s>"]
    output = translation_tokens(result.output)
    queries, keys = {"cross": (output, source), "encoder": (source, source),
                     "decoder": (output, ["<s>"] + output[:-1])}[kind]
    # tick labels: the keys under the bottom row of panels, the queries beside the left column
    if rows == columns:
        assert texts.count(rows) == layers + HEADS
    else:
        assert texts.count(columns) == HEADS and texts.count(rows) == layers
    first_bottom = texts.index(f"layer {layers}, head 1")
    assert texts[first_bottom + 1: first_bottom + 1 + len(keys)] == keys
    assert texts[texts.index("layer 1, head 1") - len(queries) - 1: texts.index("layer 1, head 1") - 1] == queries
    assert ("causal" in texts[-1]) == (kind == "decoder") and "greedy" in texts[-1]
    png = tmp_path / f"{kind}.png"
    assert invoke("visualize", "runs/toy-transformer", "--grid", kind, "-o", png).exit_code == 0
    assert_png(png, 20_000)


@pytest.mark.parametrize("beam", [1, 3])
def test_teacher_forced_cross_attention_equals_incremental_decoding(in_workdir, beam):
    bundle = load_checkpoint("runs/toy-transformer/best.pt")
    sentences = [SENTENCE, "a cat runs", "every small bird sees the big red house near the river"]
    decode = decode_request(bundle.config.decode, beam=beam)
    decoded = translator(bundle, decode).translate(sentences, need_attention=True)
    examples = [make_example(bundle.src_tokenizer.encode(s), []) for s in sentences]
    hyps = [h[0] for h in decode_examples(bundle.model, examples, decode)]
    for example, hyp, result in zip(examples, hyps, decoded):
        src = torch.tensor([example.src])
        with torch.no_grad():
            maps = bundle.model.attention_maps(src, torch.ones_like(src, dtype=torch.bool),
                                               torch.tensor([[BOS] + hyp.tokens]))
        T, S = len(hyp.tokens) + 1, len(example.src)
        assert maps["encoder"].shape == (1, ENCODER_LAYERS, HEADS, S, S)
        assert maps["decoder"].shape == (1, DECODER_LAYERS, HEADS, T, T)
        assert maps["cross"].shape == (1, DECODER_LAYERS, HEADS, T, S)
        incremental = result.attention.view(T, DECODER_LAYERS, HEADS, S).permute(1, 2, 0, 3)
        torch.testing.assert_close(maps["cross"][0], incremental, atol=1e-5, rtol=1e-4)
        for weights in maps.values():  # every row a distribution
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert maps["decoder"][0].triu(1).abs().max() == 0  # causal: nothing from later positions
        assert maps["decoder"][0][..., torch.ones(T, T, dtype=torch.bool).tril()].min() > 0
    # the CLI's grid is the same pass: its first panel is the same matrix
    from mtcli.visualize import attention_grids

    grid = attention_grids(bundle, sentences[:1], decode, "cross")[0]
    first = decoded[0].attention.view(-1, DECODER_LAYERS, HEADS, len(decoded[0].src_pieces))[:, 0, 0]
    torch.testing.assert_close(grid.weights[0, 0], first, atol=1e-5, rtol=1e-4)
    assert grid.query_tokens == decoded[0].tgt_pieces and grid.key_tokens == decoded[0].src_pieces


def test_grid_mistakes_and_other_backends(in_workdir, tmp_path):
    png = tmp_path / "g.png"
    one_line_error(invoke("visualize", "runs/toy-attention", "--grid", "cross", "-o", png),
                   "the attention backend has one attention map")
    result = invoke("visualize", "runs/toy-seq2seq", "--grid", "cross", "-o", png)
    assert result.exit_code == 0 and "has no attention" in result.output
    assert len(result.output.strip().splitlines()) == 1
    one_line_error(invoke("visualize", "runs/toy-transformer", "--grid", "cross"), "--grid draws a figure: give -o")
    one_line_error(invoke("visualize", "runs/toy-transformer", "--grid", "self", "-o", png),
                   "--grid 'self': not one of cross, encoder, decoder")
    one_line_error(invoke("visualize", "runs/toy-transformer", "--grid", "cross", "--head", "1", "-o", png),
                   "leave out --layer and --head")
    one_line_error(invoke("visualize", "runs/toy-transformer", "--grid", "cross", "-o", tmp_path / "g.gif"),
                   "unsupported figure format")
    assert not png.exists()


# ---------------------------------------------------------------- beam outputs


def heatmap_rows(output: str, label_width: int) -> list[str]:
    """The labels of the terminal heatmap's rows: lines between the title and the legend whose label column
    (right-justified, `label_width` wide) is not blank; the source tokens above it leave that column blank."""
    lines = output.splitlines()
    body = lines[1: next(i for i, line in enumerate(lines) if line.startswith("weight "))]
    return [line[:label_width].strip() for line in body if line[:label_width].strip()]


@pytest.mark.parametrize("backend", ["attention", "transformer"])
def test_beam_output_heatmap_has_a_row_per_output_token(in_workdir, tmp_path, backend):
    svg = tmp_path / "beam.svg"
    result = invoke("visualize", f"runs/toy-{backend}", "-s", SENTENCE, "--beam", "3", "-o", svg)
    assert result.exit_code == 0, result.output
    assert "beam 3" in result.output.splitlines()[0]
    tokens = translation_tokens(result.output)
    bundle = load_checkpoint(f"runs/toy-{backend}/best.pt")
    expected = translator(bundle, decode_request(bundle.config.decode, beam=3)).translate([SENTENCE])[0]
    assert tokens == expected.tgt_pieces  # what beam search chose, EOS included
    assert heatmap_rows(result.output, max(map(len, tokens)) + 1) == tokens
    texts = svg_texts(svg)  # x ticks (source), "source", y ticks (output rows), "output"
    between = texts[texts.index("source") + 1: texts.index("output")]
    assert between == tokens and texts[: texts.index("source")] == SENTENCE.split() + ["</s>"]


# ---------------------------------------------------------------- the dev set into a folder


def test_all_writes_numbered_figures_for_dev_sentences(in_workdir, tmp_path):
    folder = tmp_path / "figures" / "dev"  # created with its parents
    result = invoke("visualize", "runs/toy-attention", "--all", "3", "-o", folder, "--beam", "1")
    assert result.exit_code == 0, result.output
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["dev-0001.png", "dev-0002.png", "dev-0003.png"]
    for f in files:
        assert_png(f)
    saved = [line for line in result.output.splitlines() if line.startswith("saved ")]
    assert len(saved) == 3 and saved[0].startswith(f"saved {folder / 'dev-0001.png'}")
    assert "3 dev sentences: 3 figures" in result.output
    # more than the dev set has: all of them, as SVG, one heatmap each
    svgs = tmp_path / "svgs"
    result = invoke("visualize", "runs/toy-transformer", "--all", "100", "-o", svgs, "--format", "svg")
    assert result.exit_code == 0, result.output
    assert sorted(f.name for f in svgs.iterdir()) == [f"dev-{i:04d}.svg" for i in range(1, DEV_SIZE + 1)]
    assert f"{DEV_SIZE} dev sentences, all the dev split has" in result.output
    from mtcli.data.corpus import load_split

    dev = load_split(load_checkpoint("runs/toy-transformer/best.pt").config.data, "dev")
    assert len(dev.src) == DEV_SIZE
    for i in (0, DEV_SIZE - 1):  # each figure is its own dev sentence, in order
        texts = svg_texts(svgs / f"dev-{i + 1:04d}.svg")
        assert texts[: texts.index("source")] == dev.src[i].split() + ["</s>"]
        assert svg_count(svgs / f"dev-{i + 1:04d}.svg", "axes") == 2  # heatmap and colour bar
    # with --grid: a grid per sentence
    grids = tmp_path / "grids"
    assert invoke("visualize", "runs/toy-transformer", "--all", "2", "--grid", "encoder", "-o", grids,
                  "--format", "svg").exit_code == 0
    assert svg_count(grids / "dev-0002.svg", "axes") == ENCODER_LAYERS * HEADS + 1


def test_all_mistakes(in_workdir, tmp_path):
    a_file = tmp_path / "taken.png"
    a_file.write_bytes(b"x")
    one_line_error(invoke("visualize", "runs/toy-attention", "--all", "2", "-o", a_file), "taken.png: is a file")
    assert a_file.read_bytes() == b"x"
    one_line_error(invoke("visualize", "runs/toy-attention", "--all", "2"), "--all writes one figure per dev")
    one_line_error(invoke("visualize", "runs/toy-attention", "--all", "2", "-o", tmp_path / "d", "--format", "gif"),
                   "--format 'gif': not one of png, svg, pdf")
    one_line_error(invoke("visualize", "runs/toy-attention", "--all", "2", "-o", tmp_path / "d", "-s", "a cat"),
                   "leave out --sentence")
    one_line_error(invoke("visualize", "runs/toy-attention", "--format", "svg"), "--format goes with --all")
    one_line_error(invoke("visualize", "runs/toy-attention", "--all", "0", "-o", tmp_path / "d"), "--all")
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- training curves


def metrics_records(run: str) -> list[dict]:
    return [json.loads(line) for line in (Path("runs") / run / "metrics.jsonl").read_text().splitlines()]


def test_validation_records_carry_training_seconds(in_workdir):
    records = metrics_records("toy-transformer")
    validations = [r for r in records if r["event"] == "validation"]
    end = next(r for r in records if r["event"] == "end")
    assert [v["step"] for v in validations] == [10, 20]
    elapsed = [v["elapsed"] for v in validations]
    assert 0 < elapsed[0] <= elapsed[1] <= end["train_seconds"] + 0.01
    step_20 = next(r for r in records if r["event"] == "step" and r["step"] == 20)
    assert abs(elapsed[1] - step_20["elapsed"]) < 0.01  # the same clock as the step records


def table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0].startswith("toy-"):
            rows[cells[0]] = cells[1:]
    return rows


def test_curves_of_several_runs_overlaid(in_workdir, tmp_path):
    svg = tmp_path / "curves.svg"
    runs = ["runs/toy-transformer", "runs/toy-attention", "runs/toy-seq2seq"]
    result = invoke("visualize", "--curves", *runs, "-o", svg)
    assert result.exit_code == 0, result.output
    texts = svg_texts(svg)
    for title in ("training loss", "dev BLEU by step", "dev BLEU by training time"):
        assert title in texts
    assert "training seconds (validation excluded)" in texts and texts.count("step") == 2
    assert svg_count(svg, "axes") == 3 and svg_count(svg, "legend") == 3
    for name in ("toy-transformer", "toy-attention", "toy-seq2seq"):
        assert texts.count(name) == 3  # in each panel's legend
    rows = table_rows(result.output)
    assert set(rows) == {"toy-transformer", "toy-attention", "toy-seq2seq"}
    for name, (backend, steps, best, at, seconds) in rows.items():
        records = metrics_records(name)
        bleu = {r["step"]: r["bleu"] for r in records if r["event"] == "validation"}
        end = next(r for r in records if r["event"] == "end")
        assert backend == name.removeprefix("toy-") and steps == "20"
        assert abs(float(best) - max(bleu.values())) < 0.01
        assert int(at) in bleu and bleu[int(at)] == max(bleu.values())
        assert abs(float(seconds) - end["train_seconds"]) <= 0.05 + 1e-9 and float(seconds) > 0  # shown to 0.1 s
    png = tmp_path / "curves.png"
    assert invoke("visualize", "--curves", "runs/toy-attention", "-o", png).exit_code == 0
    assert_png(png, 20_000)
    result = invoke("visualize", "--curves", "runs/toy-seq2seq/best.pt")  # a checkpoint names its run; table only
    assert result.exit_code == 0 and list(table_rows(result.output)) == ["toy-seq2seq"]


def test_curves_mistakes(in_workdir, tmp_path):
    one_line_error(invoke("visualize", "runs/toy-transformer", "runs/toy-attention"),
                   "several runs go with --curves only")
    not_a_run = tmp_path / "empty-run"
    not_a_run.mkdir()
    one_line_error(invoke("visualize", "--curves", "runs/toy-transformer", not_a_run),
                   f"{not_a_run}: no metrics.jsonl")
    one_line_error(invoke("visualize", "--curves", "runs/missing"), "runs/missing: no such run folder")
    one_line_error(invoke("visualize", "--curves", "runs/toy-transformer", "--grid", "cross"),
                   "--grid does not apply")
    one_line_error(invoke("visualize", "--curves", "runs/toy-transformer", "-o", tmp_path / "c.gif"),
                   "unsupported figure format")


def test_parse_metrics_after_a_resume_and_without_validation_seconds():
    """A run killed after step 30 and resumed from its step-20 checkpoint; validation records of an older
    mtcli (no "elapsed") get their training seconds from the step records."""
    records = [
        {"event": "start", "backend": "transformer", "resumed_step": 0},
        {"event": "step", "step": 10, "loss": 5.0, "elapsed": 2.0},
        {"event": "step", "step": 20, "loss": 4.0, "elapsed": 4.0},
        {"event": "validation", "step": 20, "bleu": 10.0},
        {"event": "step", "step": 30, "loss": 3.9, "elapsed": 6.0},
        {"event": "validation", "step": 30, "bleu": 11.0},  # lost with the kill: trained again
        {"event": "start", "backend": "transformer", "resumed_step": 20},
        {"event": "step", "step": 30, "loss": 3.0, "elapsed": 6.5},
        {"event": "validation", "step": 25, "bleu": 30.0},
        {"event": "validation", "step": 40, "bleu": 20.0, "elapsed": 9.0},
        {"event": "end", "step": 40, "train_seconds": 9.0},
    ]
    lines = [json.dumps(r) for r in records] + ['{"event": "step", "st']  # a line cut short
    curves = parse_metrics(lines, "run", Path("run/metrics.jsonl"))
    assert curves.steps == [10, 20, 30] and curves.losses == [5.0, 4.0, 3.0]
    assert curves.dev_steps == [20, 25, 40] and curves.dev_bleu == [10.0, 30.0, 20.0]
    assert curves.dev_elapsed == [4.0, 5.25, 9.0]  # 25: halfway between steps 20 (4.0 s) and 30 (6.5 s)
    assert curves.best == (30.0, 25) and curves.last_step == 40 and curves.train_seconds == 9.0
    assert interpolate(5, [(0, 0.0), (10, 2.0)]) == 1.0 and interpolate(20, [(0, 0.0), (10, 2.0)]) == 4.0
    from mtcli.errors import MtcliError

    with pytest.raises(MtcliError, match="no training steps or validations recorded"):
        parse_metrics([json.dumps(records[0])], "run", Path("run/metrics.jsonl"))
