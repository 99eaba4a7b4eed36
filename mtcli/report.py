"""One self-contained HTML page per run: config, environment, data hashes, scores with signatures, learning
curves, BLEU by length and sample translations with their attention. No network resource: the figures are
inline SVG and the style sheet is in the page."""

from __future__ import annotations

import hashlib
import html
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from mtcli.analysis import Comparison, compare_runs
from mtcli.checkpoint import Bundle
from mtcli.config import DecodeConfig, dump_config
from mtcli.data.corpus import load_split, split_files
from mtcli.files import atomic_write_text
from mtcli.inference import translator
from mtcli.metrics import METRICS
from mtcli.models import BACKENDS
from mtcli.plots import attention_figure, curves_figure, length_figure, svg_markup
from mtcli.visualize import pick_map, training_curves

PACKAGES = ("mtcli", "torch", "sacrebleu", "sentencepiece", "typer", "rich", "pyyaml", "matplotlib", "numpy")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre, code { background: #f7f7f7; font-size: 12px; } pre { padding: .8em; overflow-x: auto; }
.figure svg { max-width: 100%; height: auto; } .sample { margin: 1em 0 2em; } .muted { color: #777; }
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_hashes(bundle: Bundle) -> list[tuple[str, str, str]]:
    """(split, file or description, sha256) for every split the config names."""
    cfg = bundle.config.data
    rows = []
    for split in ("train", "dev", "test"):
        if cfg.dir is None:
            text = load_split(cfg, split)
            digest = hashlib.sha256("\n".join(f"{s}\t{t}" for s, t in zip(text.src, text.tgt)).encode()).hexdigest()
            rows.append((split, f"built-in toy pair, seed {cfg.toy.seed}, {len(text)} pairs (hash of the text)",
                         digest))
            continue
        for path in split_files(cfg, split):
            rows.append((split, str(path), sha256(path) if path.is_file() else "missing"))
    return rows


def environment() -> list[tuple[str, str]]:
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform()),
            ("processor", platform.processor() or platform.machine()), ("CPU cores", str(os.cpu_count())),
            ("torch threads", str(torch.get_num_threads())),
            ("CUDA", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")]
    for package in PACKAGES:
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    return rows


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{html.escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _scores_section(result: Comparison) -> str:
    run = result.runs[0]
    s = run.scores
    rows = [[METRICS[m].label, f"{s.score[m]:.2f}", "-" if s.ci[m] is None else f"{s.mean[m]:.2f} ± {s.ci[m]:.2f}",
             result.signatures[m]] for m in s.score]
    beam = result.search or (f"beam {result.beam_size}" if result.beam_size else "the config's decode settings")
    out = (f"<p>{html.escape(result.test_set)}: {result.sentences} sentences, {beam}; 95% confidence intervals "
           f"by bootstrap resampling ({result.samples} samples).</p>"
           + _table(["metric", "score", "bootstrap mean ± 95% CI", "sacreBLEU signature"], rows, {1, 2}))
    if run.alignment is not None:
        a = run.alignment
        rows = [[a.main_label, f"{a.main.aer:.2f}", f"{a.main.accuracy:.2f}"]]
        if a.best_head:
            rows.append([f"best single head: {a.best_head[0]}", f"{a.best_head[1].aer:.2f}",
                         f"{a.best_head[1].accuracy:.2f}"])
        out += (f"<p>Attention as alignment ({html.escape(a.kind)}): argmax link per target word against the "
                f"gold links of the toy pair, {a.main.pairs} pairs.</p>"
                + _table(["attention map", "AER %", "accuracy %"], rows, {1, 2}))
    return out


def build_report(bundle: Bundle, decode: DecodeConfig | None = None, samples: int = 3, bootstrap: int = 1000) -> str:
    """The HTML page for the run `bundle` comes from, scored on its config's test set."""
    run_dir = bundle.path.parent
    data = load_split(bundle.config.data, "test")
    decode = decode or bundle.config.decode
    result = compare_runs([bundle], data, [decode], "bs", bootstrap)
    run = result.runs[0]
    facts = run.facts
    parts = [f"<h1>{html.escape(bundle.config.name)}</h1>",
             f"<p class=muted>{html.escape(str(bundle.path))} &middot; {html.escape(run.backend)} &middot; "
             f"{facts['parameters']:,} parameters &middot; step {facts.get('step')} &middot; "
             f"{facts.get('train_seconds') or 0:,.0f} s of training &middot; "
             f"report written {time.strftime('%Y-%m-%d %H:%M')}</p>",
             "<h2>Test scores</h2>", _scores_section(result)]
    if (run_dir / "metrics.jsonl").is_file():
        curves = training_curves([str(run_dir)])
        parts += ["<h2>Learning curves</h2>", f"<div class=figure>{svg_markup(curves_figure(curves))}</div>"]
    rows = [[b.label, str(b.sentences), "-" if b.bleu is None else f"{b.bleu:.2f}"] for b in run.buckets]
    parts += ["<h2>BLEU by source length</h2>", _table(["source words", "sentences", "BLEU"], rows, {1, 2}),
              f"<div class=figure>{svg_markup(length_figure(result))}</div>"]
    parts.append("<h2>Sample translations</h2>")
    sentences = data.src[:samples]
    outputs = translator(bundle, decode).translate(sentences, need_attention=bundle.model.has_attention)
    layers, heads = bundle.model.attention_shape()
    what = BACKENDS[bundle.config.model.backend].attention_label(bundle.config.model)
    what += f", last layer, mean of {heads} heads" if layers * heads > 1 else ""
    for i, (src, out) in enumerate(zip(sentences, outputs)):
        rows = [["source", src], ["reference", data.tgt[i]], ["output", out.text]]
        parts.append(f"<div class=sample>{_table(['', 'text'], rows)}")
        if out.attention is not None:
            maps = pick_map(out.attention, (layers, heads))
            figure = attention_figure(out.src_pieces, out.tgt_pieces, maps, what)
            parts.append(f"<div class=figure>{svg_markup(figure)}</div>")
        parts.append("</div>")
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(dump_config(bundle.config))}</pre>",
              "<h2>Data</h2>", _table(["split", "file", "sha256"], [list(r) for r in data_hashes(bundle)]),
              "<h2>Environment</h2>", _table(["", "version"], [list(r) for r in environment()])]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(bundle.config.name)}"
            f" - mtcli report</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_report(bundle: Bundle, path: Path, decode: DecodeConfig | None = None, samples: int = 3) -> Path:
    atomic_write_text(path, build_report(bundle, decode, samples))
    return path
