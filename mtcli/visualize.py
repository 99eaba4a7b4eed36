"""What `mtcli visualize` draws, as plain data: attention matrices of translated sentences (one map, or
every layer and head of a Transformer) and the training curves of run folders (from metrics.jsonl).

Picks a layer and a head (or the mean over heads) from the K = layers x heads maps search returns;
Transformer grids come from one teacher-forced pass over the translation (Transformer.attention_maps).
No terminal and no matplotlib here: ui.py and plots.py draw the results.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtcli.checkpoint import Bundle, resolve_checkpoint
from mtcli.config import DecodeConfig
from mtcli.data.batching import make_example
from mtcli.data.corpus import load_split
from mtcli.data.tokenizers import BOS, EOS
from mtcli.errors import MtcliError
from mtcli.inference import decode_examples, describe, translator
from mtcli.models import BACKENDS
from mtcli.runlog import parse_records

GRIDS = {  # --grid kind: what the maps are, rows (queries) x columns (keys)
    "cross": ("cross-attention", "output", "source"),
    "encoder": ("encoder self-attention", "source", "source"),
    "decoder": ("decoder self-attention, causal", "output", "decoder input"),
}
FIGURE_FORMATS = ("png", "svg", "pdf")


@dataclass
class AttentionView:
    src_tokens: list[str]
    tgt_tokens: list[str]
    weights: torch.Tensor  # (T, S)
    translation: str
    title: str


@dataclass
class AttentionGrid:
    """Every layer and head of one kind of Transformer attention for one translated sentence."""

    kind: str  # cross, encoder or decoder
    query_tokens: list[str]  # the rows of every map
    key_tokens: list[str]  # the columns
    weights: torch.Tensor  # (layers, heads, rows, columns)
    translation: str
    title: str
    query_label: str
    key_label: str


# ---------------------------------------------------------------- options


def check_options(runs: list[str], *, curves: bool, grid: str | None, all_dev: int | None, output: Path | None,
                  sentence: str | None, beam: int | None, layer: int | None, head: int | None,
                  fmt: str | None) -> None:
    """The combinations of `mtcli visualize` options that make no sense, as one-line errors (before any work)."""
    if output is not None and all_dev is None and output.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise MtcliError(f"{output}: unsupported figure format (use {', '.join('.' + f for f in FIGURE_FORMATS)})")
    if curves:
        given = [name for name, value in (("--sentence", sentence), ("--grid", grid), ("--all", all_dev),
                                          ("--beam", beam), ("--layer", layer), ("--head", head),
                                          ("--format", fmt)) if value is not None]
        if given:
            raise MtcliError(f"--curves draws training curves from metrics.jsonl: {', '.join(given)} "
                             "does not apply to it")
        return
    if len(runs) > 1:
        raise MtcliError(f"{len(runs)} runs given: several runs go with --curves only; "
                         "give one run folder or checkpoint")
    if grid is not None:
        if grid not in GRIDS:
            raise MtcliError(f"--grid {grid!r}: not one of {', '.join(GRIDS)}")
        if output is None:
            raise MtcliError("--grid draws a figure: give -o FILE (.png, .svg or .pdf)")
        if layer is not None or head is not None:
            raise MtcliError("--grid shows every layer and head: leave out --layer and --head")
    if fmt is not None:
        if all_dev is None:
            raise MtcliError("--format goes with --all (with -o FILE the file's suffix sets the format)")
        if fmt.lower() not in FIGURE_FORMATS:
            raise MtcliError(f"--format {fmt!r}: not one of {', '.join(FIGURE_FORMATS)}")
    if all_dev is not None:
        if output is None:
            raise MtcliError("--all writes one figure per dev sentence: give the folder for them with -o DIR")
        if output.exists() and not output.is_dir():
            raise MtcliError(f"{output}: is a file; --all needs -o DIR, a folder for the figures")
        if sentence is not None:
            raise MtcliError("--all draws the dev sentences: leave out --sentence")


def figure_paths(folder: Path, count: int, fmt: str | None = None, prefix: str = "dev") -> list[Path]:
    """folder/dev-0001.png ... (the folder is created, with its parents)."""
    if folder.exists() and not folder.is_dir():
        raise MtcliError(f"{folder}: is a file; --all needs -o DIR, a folder for the figures")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtcliError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None
    suffix = (fmt or "png").lower()
    return [folder / f"{prefix}-{i:04d}.{suffix}" for i in range(1, count + 1)]


# ---------------------------------------------------------------- attention


def default_sentence(bundle: Bundle) -> str:
    return load_split(bundle.config.data, "test").src[0]


def dev_sentences(bundle: Bundle, count: int) -> list[str]:
    """The first `count` source sentences of the config's dev split (all of them if it has fewer)."""
    sentences = load_split(bundle.config.data, "dev").src[:count]
    if not sentences:
        raise MtcliError(f"{bundle.path}: the config's dev split has no sentences")
    return sentences


def attention_views(bundle: Bundle, sentences: list[str], decode: DecodeConfig | None = None,
                    layer: int | None = None, head: int | None = None, grid: str | None = None
                    ) -> list[AttentionView] | list[AttentionGrid] | None:
    """One view per sentence (translated in batches, with the run's decode section or `decode`): one
    attention matrix each, or with `grid` every layer and head of a Transformer. None when the backend has
    no attention."""
    decode = decode or bundle.config.decode
    if not bundle.model.has_attention:
        return None
    if any(not s.strip() for s in sentences):
        raise MtcliError("--sentence: nothing to translate")
    if grid is not None:
        return attention_grids(bundle, sentences, decode, grid)
    layers, heads = bundle.model.attention_shape()
    if layer is not None and layer > layers:
        raise MtcliError(f"--layer {layer}: the model has {layers} decoder layer(s)")
    if head is not None and head > heads:
        raise MtcliError(f"--head {head}: the model has {heads} attention head(s)")
    what = BACKENDS[bundle.config.model.backend].attention_label(bundle.config.model)
    if layers * heads > 1:
        what += f", layer {layer or layers}/{layers}, " + (f"head {head}/{heads}" if head else f"mean of {heads} heads")
    title = f"{bundle.config.name}: {what}, {describe(decode)}"
    results = translator(bundle, decode).translate(sentences, need_attention=True)
    return [AttentionView(r.src_pieces, r.tgt_pieces, pick_map(r.attention, (layers, heads), layer, head), r.text,
                          title) for r in results]


def pick_map(attention: torch.Tensor, shape: tuple[int, int], layer: int | None = None, head: int | None = None
             ) -> torch.Tensor:
    """(T, K, S) maps, K = layers x heads (`shape`) -> (T, S): one layer's (1-based; default the last) one
    head, or the mean of its heads."""
    layers, heads = shape
    chosen = attention.view(attention.size(0), layers, heads, -1)[:, (layer or layers) - 1]  # (T, H, S)
    return chosen.mean(dim=1) if head is None else chosen[:, head - 1]


def attention_grids(bundle: Bundle, sentences: list[str], decode: DecodeConfig, kind: str) -> list[AttentionGrid]:
    """Translate (greedy or beam), then one teacher-forced pass per sentence over the chosen output tokens
    that returns every attention weight of the Transformer."""
    if kind not in GRIDS:
        raise MtcliError(f"--grid {kind!r}: not one of {', '.join(GRIDS)}")
    model, backend = bundle.model, bundle.config.model.backend
    if not hasattr(model, "attention_maps"):
        raise MtcliError(f"{bundle.path}: the {backend} backend has one attention map (decoder over source), "
                         "not layers and heads: leave out --grid")
    examples = [make_example(bundle.src_tokenizer.encode(s), []) for s in sentences]
    hyps = [h[0] for h in decode_examples(model, examples, decode)]
    what, query_label, key_label = GRIDS[kind]
    title = f"{bundle.config.name}: {what}, {describe(decode)}"
    device = next(model.parameters()).device
    grids = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for example, hyp in zip(examples, hyps):
            src = torch.tensor([example.src], device=device)
            maps = model.attention_maps(src, torch.ones_like(src, dtype=torch.bool),
                                        torch.tensor([[BOS] + hyp.tokens], device=device))
            src_pieces = bundle.src_tokenizer.pieces(example.src)
            out_pieces = bundle.tgt_tokenizer.pieces(hyp.tokens + [EOS])
            queries, keys = {"cross": (out_pieces, src_pieces), "encoder": (src_pieces, src_pieces),
                             "decoder": (out_pieces, bundle.tgt_tokenizer.pieces([BOS] + hyp.tokens))}[kind]
            grids.append(AttentionGrid(kind, queries, keys, maps[kind][0].float().cpu(),
                                       bundle.tgt_tokenizer.decode(hyp.tokens), title, query_label, key_label))
    model.train(was_training)
    return grids


# ---------------------------------------------------------------- training curves


@dataclass
class RunCurves:
    """One run's training record: loss per logged step, dev BLEU per validation, training seconds."""

    name: str  # the run folder's name (its path where two runs share a name)
    path: Path
    backend: str | None = None
    steps: list[int] = field(default_factory=list)  # logged training steps
    losses: list[float] = field(default_factory=list)  # training loss per target token at those steps
    elapsed: list[float] = field(default_factory=list)  # training seconds at those steps
    dev_steps: list[int] = field(default_factory=list)
    dev_bleu: list[float] = field(default_factory=list)
    dev_elapsed: list[float] = field(default_factory=list)  # training seconds at each validation
    last_step: int = 0
    train_seconds: float = 0.0  # validation excluded

    @property
    def best(self) -> tuple[float, int] | None:
        """(best dev BLEU, its step); the earliest step on a tie; None without validations."""
        if not self.dev_bleu:
            return None
        i = max(range(len(self.dev_bleu)), key=lambda k: (self.dev_bleu[k], -self.dev_steps[k]))
        return self.dev_bleu[i], self.dev_steps[i]


def run_folder(target: str | None) -> Path:
    """A run folder, or the folder of a checkpoint in it (run/best.pt, run/checkpoints/step-N.pt);
    None: the newest run under runs/."""
    if target is None:
        return resolve_checkpoint(None).parent
    path = Path(target)
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif not path.is_dir():
        raise MtcliError(f"{target}: no such run folder")
    return path


def interpolate(step: int, points: list[tuple[int, float]]) -> float:
    """Linear interpolation of (step, seconds) points sorted by step, starting at (0, 0); past the last
    point the last average rate goes on."""
    steps = [s for s, _ in points]
    i = bisect.bisect_left(steps, step)
    if i < len(points) and steps[i] == step:
        return points[i][1]
    if i == len(points):
        s, t = points[-1]
        return t * step / s if s else 0.0
    (s0, t0), (s1, t1) = points[i - 1], points[i]
    return t0 + (t1 - t0) * (step - s0) / (s1 - s0)


def parse_metrics(lines: list[str], name: str, path: Path) -> RunCurves:
    """The curves of a metrics.jsonl (its lines). A resumed run starts again at its checkpoint's step:
    records past that step were trained again and are replaced; --restart starts a new record.
    Validation records written before they carried "elapsed" get it interpolated from the step records."""
    records = parse_records(lines)
    curves = RunCurves(name, path)
    steps: dict[int, dict] = {}
    validations: dict[int, dict] = {}
    end: dict | None = None
    for record in records:
        event = record.get("event")
        if event in ("step", "validation", "end") and not isinstance(record.get("step"), int):
            continue
        if event == "start":
            resumed = int(record.get("resumed_step") or 0)
            steps = {s: r for s, r in steps.items() if s <= resumed}
            validations = {s: r for s, r in validations.items() if s <= resumed}
            curves.backend = record.get("backend", curves.backend)
            end = None
        elif event == "step" and isinstance(record.get("loss"), (int, float)):
            steps[record["step"]] = record
        elif event == "validation" and isinstance(record.get("bleu"), (int, float)):
            validations[record["step"]] = record
        elif event == "end":
            end = record
    if not steps and not validations:
        raise MtcliError(f"{path}: no training steps or validations recorded")
    for step in sorted(steps):
        curves.steps.append(step)
        curves.losses.append(float(steps[step]["loss"]))
        curves.elapsed.append(float(steps[step].get("elapsed", 0.0)))
    points = [(0, 0.0)] + list(zip(curves.steps, curves.elapsed))
    if end is not None and end.get("train_seconds") is not None and int(end["step"]) > points[-1][0]:
        points.append((int(end["step"]), float(end["train_seconds"])))
    for step in sorted(validations):
        record = validations[step]
        curves.dev_steps.append(step)
        curves.dev_bleu.append(float(record["bleu"]))
        curves.dev_elapsed.append(float(record["elapsed"]) if "elapsed" in record else interpolate(step, points))
    curves.last_step = max([*curves.steps, *curves.dev_steps, int(end["step"]) if end else 0])
    if end is not None and end.get("train_seconds") is not None:
        curves.train_seconds = float(end["train_seconds"])
    else:  # stopped without an end record (killed): the last time it recorded
        curves.train_seconds = max([*curves.elapsed, *curves.dev_elapsed, 0.0])
    return curves


def training_curves(targets: list[str | None]) -> list[RunCurves]:
    """The curves of each run folder (metrics.jsonl), named by the folder; one-line errors for a folder
    that is not a run."""
    folders = [run_folder(t) for t in targets]
    names = [f.resolve().name or str(f) for f in folders]
    out = []
    for folder, name in zip(folders, names):
        if names.count(name) > 1:
            name = str(folder)
        metrics = folder / "metrics.jsonl"
        if not metrics.is_file():
            raise MtcliError(f"{folder}: no metrics.jsonl in this folder (is it a training run folder?)")
        try:
            lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise MtcliError(f"{metrics}: cannot read it ({exc.strerror or exc})") from None
        out.append(parse_metrics(lines, name, metrics))
    return out
