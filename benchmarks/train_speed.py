"""Training throughput of mtcli configs per precision: steady-state target tokens/s and peak memory.

    python benchmarks/train_speed.py                                  # the toy and Multi30k Transformers
    python benchmarks/train_speed.py --config experiments/toy-attention.yaml --precision fp32 bf16 --reps 5

Each measurement is a fresh process (so peak RSS is its own) that builds the model exactly as
`mtcli train` does, runs `--warmup` updates, then times `--steps` updates of the real training step
(forward, backward, clipping, optimizer). Precisions are interleaved within each repetition so that
machine noise hits them alike; the medians are printed as one `RESULT ...` line per config and
precision, in the form of ../shared/bench. The data is prepared once per config (into the prepared-data
cache), and the measuring processes map it.
Run it with nothing else busy: two processes on two cores halve each other's figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ["experiments/toy-transformer.yaml", "experiments/multi30k-transformer.yaml"]


def load(config: str, precision: str, threads: int, run_dir: str):
    from mtcli.config import load_config

    return load_config(ROOT / config, [f"train.precision={precision}", f"train.threads={threads}",
                                       "train.device=cpu", f"run_dir={run_dir}"])


def child(args: argparse.Namespace) -> None:
    """One measurement: print {"tokens": [...], "seconds": [...], "peak_rss_mb": ...} as JSON."""
    import torch

    from mtcli.training import Trainer

    class Measured(Trainer):
        def _resumable(self):
            return None

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Measured(load(args.config, args.precision, args.threads, tmp), [])
    tokens, seconds = [], []
    while len(tokens) < args.warmup + args.steps:
        groups = list(trainer._groups())
        if not groups:
            trainer.progress.epoch, trainer.progress.batch_in_epoch = trainer.progress.epoch + 1, 0
            continue
        for group in groups:
            _, n, dt, _ = trainer._update(group)
            tokens.append(n)
            seconds.append(dt)
            if len(tokens) == args.warmup + args.steps:
                break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": tokens[args.warmup:], "seconds": seconds[args.warmup:], "peak_rss_mb": peak,
                      "parameters": trainer.model.parameter_count(), "threads": torch.get_num_threads()}))


def prepare_once(config: str, folder: Path):
    """Prepare the config's data once (into the prepared-data cache) for the measuring processes."""
    from mtcli.data.dataset import prepare_data

    return prepare_data(load(config, "fp32", 0, str(folder)).data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=30, help="timed updates per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first")
    parser.add_argument("--reps", type=int, default=3, help="measurements per config and precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.config, args.precision = args.config[0], args.precision[0]
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config:
            prepare_once(config, Path(tmp))
            runs: dict[str, list[dict]] = {p: [] for p in args.precision}
            for rep in range(args.reps):
                for precision in args.precision:
                    command = [sys.executable, __file__, "--child", "--config", config, "--precision", precision,
                               "--steps", str(args.steps), "--warmup", str(args.warmup),
                               "--threads", str(args.threads)]
                    start = time.perf_counter()
                    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                    if out.returncode:
                        sys.exit(f"{config} {precision}: {out.stderr.strip().splitlines()[-1]}")
                    record = json.loads(out.stdout.strip().splitlines()[-1])
                    record["tok_s"] = sum(record["tokens"]) / sum(record["seconds"])
                    runs[precision].append(record)
                    print(f"# {Path(config).stem} {precision} rep {rep + 1}: {record['tok_s']:,.0f} tok/s, "
                          f"peak {record['peak_rss_mb']:,.0f} MB ({time.perf_counter() - start:.0f}s)", flush=True)
            baseline = None
            for precision, records in runs.items():
                tok_s = statistics.median(r["tok_s"] for r in records)
                baseline = baseline or tok_s
                first, each = records[0], ",".join(f"{r['tok_s']:.0f}" for r in records)
                print(f"RESULT tool=mtcli kind=train config={Path(config).stem} precision={precision} "
                      f"params={first['parameters']} threads={first['threads']} steps={args.steps} "
                      f"train_tok_s={tok_s:.1f} vs_{args.precision[0]}={tok_s / baseline:.3f} "
                      f"runs={each} "
                      f"peak_rss_mb={statistics.median(r['peak_rss_mb'] for r in records):.0f}", flush=True)


if __name__ == "__main__":
    main()
