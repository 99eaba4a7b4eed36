"""`make bench`: training and decoding speed, memory and MFU of mtcli, in the RESULT form of ../shared/bench.

    python benchmarks/bench.py                       # everything below on the default configs (~30-40 min)
    python benchmarks/bench.py --config experiments/bench-transformer.yaml --reps 5 --only train
    python benchmarks/bench.py --quick               # a tiny smoke run on the toy configs (seconds)

What it measures, each in a fresh process (so that peak RSS is its own), with nothing else busy:
  peak    fp32 and bf16 matrix-product GFLOP/s of this machine (torch.mm, the same threads): the limit
          that MFU is expressed against.
  train   steady-state target tokens/s of the real training step (forward, backward, clipping, optimizer)
          after warmup updates, per precision; peak RSS of the training process (data included);
          MFU = tokens/s x model FLOPs per target token / matmul peak of that precision (and vs fp32).
          Model FLOPs count matrix products on real tokens only (padding not counted), training = 3x the
          forward pass, as ../shared/bench/flops.py does for the peers.
  decode  greedy and beam-5 search, batches of 64 sentences, sentences/s and output tokens/s of
          Translator.translate (tokenize, search, detokenize; model loading excluded), in fp32 and
          under bf16 autocast (decode.precision):
            fixed    every sentence decodes exactly 30 pieces (EOS banned before, forced after), so
                     engines are compared step for step whatever the model's training state; the
                     config's model with its initial weights, on the first --decode-sents dev sentences.
            natural  the trained checkpoint runs/<config name>/best.pt, when there is one, on the
                     config's whole test set, with its BLEU.
Every figure is the median of --reps repetitions; one `RESULT tool=mtcli kind=...` line per measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_speed import load, prepare_once  # noqa: E402

CONFIGS = ["experiments/bench-transformer.yaml", "experiments/bench-attention.yaml",
           "experiments/multi30k-seq2seq.yaml", "experiments/multi30k-attention.yaml",
           "experiments/multi30k-transformer.yaml"]
QUICK = ["experiments/toy-transformer.yaml", "experiments/toy-attention.yaml", "experiments/toy-seq2seq.yaml"]
KIND = {"transformer": "transformer", "attention": "rnn-attention", "seq2seq": "rnn-seq2seq"}
FIXED_LEN = 30


# ---------------------------------------------------------------- model FLOPs


def flops_per_target_token(model, vocab: int, src_len: float, tgt_len: float) -> float:
    """Training FLOPs per real target token: 3 x forward matrix-product FLOPs (1 multiply-add = 2).

    Lengths are the training data's averages (EOS included); attention spans the average lengths.
    For the Transformer this is ../shared/bench/flops.py's count.
    """
    ratio = src_len / tgt_len  # source tokens per target token
    if model.backend == "transformer":
        d, ff = model.embed_dim, model.ff_dim
        enc = 4 * d * d + 2 * d * ff + 2 * src_len * d  # per source token and encoder layer
        dec_kv = 2 * d * d  # cross-attention keys/values, per source token and decoder layer
        dec = 4 * d * d + 2 * d * d + 2 * d * ff + 2 * tgt_len * d + 2 * src_len * d
        macs = (enc * model.encoder_layers + dec_kv * model.decoder_layers) * ratio + dec * model.decoder_layers
        macs += d * vocab
    else:
        e, h = model.embed_dim, model.hidden_dim
        gates = 4 if model.rnn_type == "lstm" else 3
        dirs = 2 if model.bidirectional else 1
        hd = h // dirs
        enc = 0
        for layer in range(model.encoder_layers):  # per source token
            enc += dirs * gates * ((e if layer == 0 else h) * hd + hd * hd)
        dec = sum(gates * (((e + h) if layer == 0 else h) * h + h * h) for layer in range(model.decoder_layers))
        if model.backend == "attention":
            keys = h * h if model.attention != "dot" else 0  # W1 h_s / W h_s, per source token
            enc += keys
            score = {"additive": h * h + src_len * h, "general": src_len * h, "dot": src_len * h}[model.attention]
            dec += score + src_len * h + 2 * h * h  # query side, context, combine
        else:
            dec += (2 * h + e) * h  # pre-output layer
        macs = enc * ratio + dec + h * vocab
    return 3 * 2 * macs


# ---------------------------------------------------------------- children (one measurement each)


def matmul_peak(threads: int, sizes: list[int], seconds: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in sizes:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            c = torch.empty(n, n, dtype=dtype)
            torch.mm(a, b, out=c)
            iters, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds or iters < 3:
                torch.mm(a, b, out=c)
                iters += 1
            best = max(best, 2.0 * n ** 3 * iters / elapsed / 1e9)
        out[name] = best
    return out


def decode_child(args: argparse.Namespace) -> dict:
    """Decode with the config's fresh model (fixed length) or its trained checkpoint (natural length)."""
    import torch

    from mtcli.checkpoint import load_checkpoint
    from mtcli.config import DecodeConfig, load_config
    from mtcli.data.corpus import load_split
    from mtcli.data.dataset import prepare_train
    from mtcli.inference import Translator
    from mtcli.metrics import score
    from mtcli.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    overrides = ["decode.batch_size=64", f"decode.precision={args.precision[0]}"]
    if args.mode == "fixed":
        overrides += [f"decode.min_len={FIXED_LEN}", f"decode.max_len={FIXED_LEN + 1}", "decode.max_len_ratio=1000"]
    cfg = load_config(ROOT / args.config, overrides)
    if args.mode == "fixed":
        src_tok, tgt_tok, _, _ = prepare_train(cfg.data)  # prepared once by the parent
        model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size).eval()
        split = load_split(cfg.data, "dev")
        texts, refs = split.src[: args.decode_sents], None
        decode = cfg.decode
    else:
        bundle = load_checkpoint(args.checkpoint)
        model, src_tok, tgt_tok = bundle.model, bundle.src_tokenizer, bundle.tgt_tokenizer
        split = load_split(bundle.config.data, "test")
        texts, refs = split.src, split.tgt
        decode = DecodeConfig(**{**vars(bundle.config.decode), "batch_size": 64, "precision": args.precision[0]})
    translator = Translator(model, src_tok, tgt_tok, dataclasses.replace(decode, strategy="beam", beam_size=args.beam))
    seconds, outputs = [], None
    for _ in range(args.reps):
        start = time.perf_counter()
        outputs = translator.translate(texts)
        seconds.append(time.perf_counter() - start)
    lengths = [len(t.tgt_pieces) - 1 for t in outputs]  # output pieces, EOS not counted
    record = {"seconds": seconds, "sentences": len(texts), "out_tokens": sum(lengths),
              "mean_len": sum(lengths) / len(lengths), "min_len": min(lengths), "max_len": max(lengths),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "params": model.parameter_count()}
    if refs is not None:
        record["bleu"] = score("bleu", texts, [t.text for t in outputs], refs).score
    return record


def train_stats(config: str, data) -> dict:
    """Average training lengths (EOS included) of the prepared data, and the model FLOPs they give."""
    model = load(config, "fp32", 0, "unused").model
    vocab = data.tgt_tokenizer.vocab_size
    src_len, tgt_len = data.train.mean_lengths()
    return {"src_len": src_len, "tgt_len": tgt_len, "backend": model.backend,
            "flops": flops_per_target_token(model, vocab, src_len, tgt_len)}


# ---------------------------------------------------------------- parent


def child_json(command: list[str]) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        lines = out.stderr.strip().splitlines() or ["(no output)"]
        sys.exit(f"benchmark step failed: {' '.join(command[1:])}: {lines[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def result(**fields) -> None:
    text = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(f"RESULT tool=mtcli {text}", flush=True)


def run_peak(args) -> dict:
    sizes = "256,512" if args.quick else "1024,2048,3072"
    seconds = 0.2 if args.quick else 2.0
    peak = child_json([sys.executable, __file__, "--child", "peak", "--threads", str(args.threads),
                       "--sizes", sizes, "--seconds", str(seconds)])
    import torch

    result(kind="matmul_peak", fp32_gflops=peak["fp32"], bf16_gflops=peak["bf16"], threads=args.threads,
           torch=torch.__version__)
    return peak


def run_train(args, config: str, stats: dict, peak: dict) -> None:
    runs: dict[str, list[dict]] = {p: [] for p in args.precision}
    for _ in range(args.reps):
        for precision in args.precision:  # interleaved, so that machine noise hits them alike
            record = child_json([sys.executable, str(HERE / "train_speed.py"), "--child", "--config", config,
                                 "--precision", precision, "--steps", str(args.steps), "--warmup", str(args.warmup),
                                 "--threads", str(args.threads)])
            record["tok_s"] = sum(record["tokens"]) / sum(record["seconds"])
            runs[precision].append(record)
    for precision, records in runs.items():
        tok_s = statistics.median(r["tok_s"] for r in records)
        gflops = tok_s * stats["flops"] / 1e9
        result(kind=KIND[stats["backend"]], config=Path(config).stem, precision=precision, train_tok_s=tok_s,
               peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in records),
               mfu=f"{gflops / peak[precision]:.3f}", mfu_vs_fp32_peak=f"{gflops / peak['fp32']:.3f}",
               model_gflops=gflops, mflop_per_tok=stats["flops"] / 1e6,
               upd_tok=statistics.median(sum(r["tokens"]) / len(r["tokens"]) for r in records),
               params=records[0]["parameters"], threads=records[0]["threads"], steps=args.steps,
               runs=",".join(f"{r['tok_s']:.0f}" for r in records))


def run_decode(args, config: str, backend: str) -> None:
    checkpoint = ROOT / "runs" / Path(config).stem / "best.pt"
    modes = [("fixed", None)] + ([("natural", checkpoint)] if checkpoint.is_file() and not args.quick else [])
    for mode, path in modes:
        for precision, beam in itertools.product(args.precision, (1, 5)):
            command = [sys.executable, __file__, "--child", "decode", "--config", config, "--mode", mode,
                       "--beam", str(beam), "--reps", str(args.reps), "--threads", str(args.threads),
                       "--precision", precision, "--decode-sents", str(args.decode_sents)]
            if path:
                command += ["--checkpoint", str(path)]
            r = child_json(command)
            sec = statistics.median(r["seconds"])
            name = "greedy" if beam == 1 else f"beam{beam}"
            extra = {"bleu": f"{r['bleu']:.2f}"} if "bleu" in r else {}
            result(kind=f"{KIND[backend]}-decode", config=Path(config).stem, mode=mode, search=name,
                   **{f"{name}_sent_s": r["sentences"] / sec, f"{name}_out_tok_s": r["out_tokens"] / sec},
                   sents=r["sentences"], mean_out_len=f"{r['mean_len']:.1f}", decode_rss_mb=r["peak_rss_mb"],
                   params=r["params"], threads=args.threads, precision=precision, **extra,
                   runs=",".join(f"{s:.2f}s" for s in r["seconds"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", help="experiment configs (default: the bench and Multi30k ones)")
    parser.add_argument("--only", nargs="+", choices=["train", "decode"], default=["train", "decode"])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--steps", type=int, default=30, help="timed training updates per repetition")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training updates first")
    parser.add_argument("--decode-sents", type=int, default=256, help="dev sentences for fixed-length decoding")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="toy configs, tiny counts: checks that it runs")
    parser.add_argument("--child", choices=["peak", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["fixed", "natural"], help=argparse.SUPPRESS)
    parser.add_argument("--beam", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1024,2048,3072", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "peak":
        print(json.dumps(matmul_peak(args.threads, [int(n) for n in args.sizes.split(",")], args.seconds)))
        return
    if args.child == "decode":
        args.config = args.config[0]
        print(json.dumps(decode_child(args)))
        return
    if args.quick:
        args.config = args.config or QUICK
        args.reps, args.steps, args.warmup, args.decode_sents = 1, 3, 1, 8
    configs = args.config or CONFIGS
    for config in configs:
        if not (ROOT / config).is_file():
            sys.exit(f"{config}: no such config")
    peak = run_peak(args)
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            start = time.perf_counter()
            data = prepare_once(config, Path(tmp))
            stats = train_stats(config, data)
            del data
            print(f"# {Path(config).stem}: {stats['backend']}, average lengths {stats['src_len']:.2f} source / "
                  f"{stats['tgt_len']:.2f} target pieces, {stats['flops'] / 1e6:.2f} MFLOP per target token",
                  flush=True)
            if "train" in args.only:
                run_train(args, config, stats, peak)
            if "decode" in args.only:
                run_decode(args, config, stats["backend"])
            print(f"# {Path(config).stem} done in {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
