"""In-process A/B of decoding speed: this checkout's search against a baseline checkout's, same weights,
same sentences, alternating, medians; plus sampling and an ensemble of two beside beam 5 (this checkout).

    git worktree add --detach /tmp/mtcli-base <commit>
    python benchmarks/decode_ab.py --baseline /tmp/mtcli-base --reps 5
    python benchmarks/decode_ab.py --baseline /tmp/mtcli-base --threads 1 --clock cpu   # on a busy machine

As `make bench` decodes at fixed length: the config's model with its initial weights (seed 1), the first
--sents dev sentences, batches of 64, every output exactly 30 pieces (decode.min_len 30, the limit 31).
The baseline package is imported first and renamed in sys.modules (mtcli_base...), then this checkout's
mtcli is imported; both translate with the same tokenizers and with models holding the same weights.
Prints one RESULT line per measurement: out tok/s and sentences/s medians, and new / baseline. Outputs of
the two may differ where the baseline chose PAD or BOS (a fresh model often does), which the search now bans.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["experiments/bench-transformer.yaml", "experiments/bench-attention.yaml"]
FIXED = ["decode.batch_size=64", "decode.min_len=30", "decode.max_len=31", "decode.max_len_ratio=1000"]


def import_baseline(folder: Path, names: tuple[str, ...] = ("config", "inference", "models")) -> dict:
    """The baseline's modules mtcli.<name>, imported from `folder` and moved aside to sys.modules['mtcli_base...'],
    so that this checkout's mtcli can be imported beside them."""
    sys.path.insert(0, str(folder))
    try:
        modules = {name: importlib.import_module(f"mtcli.{name}") for name in names}
        assert Path(modules[names[0]].__file__).is_relative_to(folder), "the baseline was not imported"
    finally:
        sys.path.remove(str(folder))
    for name in [n for n in sys.modules if n == "mtcli" or n.startswith("mtcli.")]:
        sys.modules["mtcli_base" + name[len("mtcli"):]] = sys.modules.pop(name)
    importlib.invalidate_caches()
    return modules


def tokenizers(config: str, cache: Path):
    """The config's trained tokenizers, trained once and kept in `cache`."""
    import torch

    from mtcli.data.tokenizers import tokenizer_from_state

    path = cache / (Path(config).stem + ".tokenizers.pt")
    if not path.is_file():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from train_speed import prepare_once

        built, _ = prepare_once(config, cache)
        built.rename(path)
    states = torch.load(path, weights_only=True)
    return tokenizer_from_state(states["src"]), tokenizer_from_state(states["tgt"])


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(translate, texts: list[str]) -> tuple[float, list[list[str]]]:
    start = clock()
    results = translate(texts)
    return clock() - start, [r.tgt_pieces for r in results]


def baseline_translate(base: dict, model, src_tok, tgt_tok, decode, beam: int):
    """The baseline's translate with greedy (beam 1) or beam search: asked through its decode config where
    that names a strategy (since 5a970e5), else through translate's beam_size."""
    import functools

    fields = base["config"].DecodeConfig.__dataclass_fields__
    values = {k: v for k, v in vars(decode).items() if k in fields}
    if "strategy" in fields:
        values.update(strategy="beam", beam_size=beam)
    translator = base["inference"].Translator(model, src_tok, tgt_tok, base["config"].DecodeConfig(**values))
    return translator.translate if "strategy" in fields else functools.partial(translator.translate, beam_size=beam)


def compare(name: str, old_translate, new_translator, beam: int, texts: list[str], args) -> None:
    """The baseline's and this checkout's translate on each batch of 64 sentences in turn, alternating which
    goes first, so that both meet the same machine load: per repetition the total seconds of each, and the
    median over all batches of old seconds / new seconds."""
    translate = {"old": old_translate, "new": new_translator.translate}
    for which in translate:
        timed(translate[which], texts[:64])  # warm-up, untimed
    runs: dict[str, list[float]] = {"old": [], "new": []}
    ratios, outputs = [], {"old": [], "new": []}
    for rep in range(args.reps):
        totals = {"old": 0.0, "new": 0.0}
        for start in range(0, len(texts), 64):
            seconds = {}
            for which in ("old", "new") if (rep + start // 64) % 2 == 0 else ("new", "old"):
                seconds[which], pieces = timed(translate[which], texts[start: start + 64])
                totals[which] += seconds[which]
                if rep == 0:
                    outputs[which] += pieces
            ratios.append(seconds["old"] / seconds["new"])
        for which, total in totals.items():
            runs[which].append(total)
    tokens = sum(len(p) - 1 for p in outputs["new"])
    same = sum(a == b for a, b in zip(outputs["old"], outputs["new"]))
    old_s, new_s = statistics.median(runs["old"]), statistics.median(runs["new"])
    search = "greedy" if beam == 1 else f"beam{beam}"
    print(f"RESULT kind=decode-ab config={name} search={search} precision={args.precision} threads={args.threads} "
          f"clock={args.clock} "
          f"old_out_tok_s={tokens / old_s:.1f} new_out_tok_s={tokens / new_s:.1f} new_vs_old={old_s / new_s:.3f} "
          f"batch_ratio_median={statistics.median(ratios):.3f} same_outputs={same}/{len(texts)} "
          f"old_runs={','.join(f'{s:.2f}' for s in runs['old'])} "
          f"new_runs={','.join(f'{s:.2f}' for s in runs['new'])}", flush=True)


def beside_beam(name: str, translators: dict, texts: list[str], args) -> None:
    """Sentences/s of other requests (this checkout only), interleaved, median seconds."""
    runs: dict[str, list[float]] = {key: [] for key in translators}
    for translator in translators.values():
        timed(translator.translate, texts[:64])  # warm-up, untimed
    for _ in range(args.reps):
        for key, translator in translators.items():
            runs[key].append(timed(translator.translate, texts)[0])
    for key, seconds in runs.items():
        median = statistics.median(seconds)
        print(f"RESULT kind=decode config={name} search={key} precision={args.precision} threads={args.threads} "
              f"clock={args.clock} "
              f"sent_s={len(texts) / median:.1f} out_tok_s={len(texts) * 30 / median:.1f} "
              f"runs={','.join(f'{s:.2f}' for s in seconds)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the baseline commit")
    parser.add_argument("--config", nargs="+", default=CONFIGS)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sents", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["ab", "others"], help="only the A/B, or only the other requests")
    parser.add_argument("--clock", choices=list(CLOCK), default="wall",
                        help="wall seconds, or the process's CPU seconds (steadier on a busy machine, with 1 thread)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mtcli-decode-ab")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    base = import_baseline(args.baseline.resolve())
    sys.path.insert(0, str(ROOT))
    import dataclasses

    import torch

    from mtcli.config import config_to_dict, load_config
    from mtcli.data.corpus import load_split
    from mtcli.inference import Translator
    from mtcli.models import build_model
    from mtcli.models.ensemble import Ensemble

    assert Path(sys.modules["mtcli.config"].__file__).is_relative_to(ROOT)
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    for config in args.config:
        cfg = load_config(ROOT / config, FIXED + [f"decode.precision={args.precision}"])
        src_tok, tgt_tok = tokenizers(config, args.cache)
        texts, name = load_split(cfg.data, "dev").src[: args.sents], Path(config).stem
        torch.manual_seed(1)
        model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size).eval()
        request = dataclasses.replace
        if args.only != "others":
            old_model = base["models"].build_model(base["config"].ModelConfig(**config_to_dict(cfg)["model"]),
                                                   src_tok.vocab_size, tgt_tok.vocab_size).eval()
            old_model.load_state_dict(model.state_dict())
            for beam in (1, 5):
                new = Translator(model, src_tok, tgt_tok, request(cfg.decode, strategy="beam", beam_size=beam))
                old = baseline_translate(base, old_model, src_tok, tgt_tok, cfg.decode, beam)
                compare(name, old, new, beam, texts, args)
        if args.only != "ab":
            torch.manual_seed(2)
            pair = Ensemble([model, build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size).eval()])
            beam5 = request(cfg.decode, strategy="beam", beam_size=5)
            beside_beam(name, {
                "beam5": Translator(model, src_tok, tgt_tok, beam5),
                "sampling": Translator(model, src_tok, tgt_tok, request(cfg.decode, strategy="sampling")),
                "sampling-top-p0.9": Translator(model, src_tok, tgt_tok,
                                                request(cfg.decode, strategy="sampling", top_p=0.9)),
                "ensemble2-greedy": Translator(pair, src_tok, tgt_tok, request(cfg.decode, strategy="greedy")),
                "ensemble2-beam5": Translator(pair, src_tok, tgt_tok, beam5)}, texts, args)


if __name__ == "__main__":
    main()
