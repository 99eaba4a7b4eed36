"""The models and their kernels against a baseline checkout: the same numbers, and the same speed.

    git worktree add --detach /tmp/mtcli-base <commit>
    python benchmarks/kernels_ab.py identity --baseline /tmp/mtcli-base
    python benchmarks/kernels_ab.py train --baseline /tmp/mtcli-base --precision fp32 --threads 1 --clock cpu
    python benchmarks/decode_ab.py --baseline /tmp/mtcli-base --only ab     # decoding, the same way

identity: each config trains --steps updates (dropout, label smoothing, clipping, Adam: the real update)
from the same seed in a fresh process of each checkout, and the weights after them are compared exactly.
train: one process; the baseline's models and loss imported from its checkout beside this checkout's,
the same initial weights, the same batches, the same dropout seed per step, the two taking turns (which
goes first alternates). A step is the forward pass, the loss and the backward pass (the optimizer step,
the same code in both, is left out). Prints one RESULT line per config and precision: tokens/s of each,
the median over steps of old seconds / new seconds, and on how many steps the loss and every gradient
were bit-identical.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from decode_ab import CLOCK, import_baseline  # noqa: E402

TOY = ["experiments/toy-seq2seq.yaml", "experiments/toy-attention.yaml", "experiments/toy-transformer.yaml"]
BENCH = ["experiments/bench-transformer.yaml", "experiments/bench-attention.yaml"]


def import_checkout(folder: Path, names: tuple[str, ...]) -> dict:
    """mtcli.<name> for each name, imported from `folder` (this process imports no other mtcli)."""
    sys.path.insert(0, str(folder))
    modules = {name: importlib.import_module(f"mtcli.{name}") for name in names}
    assert Path(modules[names[0]].__file__).is_relative_to(folder), f"mtcli was not imported from {folder}"
    return modules


def trainer(modules: dict, config: str, overrides: list[str], run_dir: str):
    """A Trainer of `config` that starts afresh (never resumes) and writes nothing."""
    class Fresh(modules["training"].Trainer):
        def _resumable(self):
            return None

    return Fresh(modules["config"].load_config(ROOT / config, overrides + [f"run_dir={run_dir}"]), [])


def batches(trainer_, count: int) -> list:
    """The first `count` training batches of the run, in its order."""
    out = []
    while len(out) < count:
        for group in trainer_._groups():
            out += [trainer_.data.train.collate(ids) for ids in group]
            trainer_.progress.batch_in_epoch += len(group)
            if len(out) >= count:
                return out[:count]
        trainer_.progress.epoch, trainer_.progress.batch_in_epoch = trainer_.progress.epoch + 1, 0
    return out


# ---------------------------------------------------------------- identity


def identity_child(args: argparse.Namespace) -> None:
    """Train --steps updates of one config in this process with the checkout's code; save the weights."""
    import torch

    modules = import_checkout(args.checkout.resolve(), ("config", "training"))
    with tempfile.TemporaryDirectory() as tmp:
        run = trainer(modules, args.config[0], args.set, tmp)
    losses, done = [], 0
    while done < args.steps:
        for group in list(run._groups())[: args.steps - done]:
            losses.append(run._update(group)[0])
            done += 1
        run.progress.epoch, run.progress.batch_in_epoch = run.progress.epoch + 1, 0
    torch.save({"model": run.model.state_dict(), "losses": losses}, args.out)


def identity(args: argparse.Namespace) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config:
            for precision in args.precision:
                overrides = [f"train.precision={precision}", f"train.threads={args.threads}", "train.device=cpu",
                             "model.dropout=0.1", "train.label_smoothing=0.1"]
                saved = {}
                for which, checkout in (("old", args.baseline), ("new", ROOT)):
                    saved[which] = Path(tmp) / f"{which}.pt"
                    command = [sys.executable, __file__, "identity-child", "--checkout", str(checkout),
                               "--config", config, "--steps", str(args.steps), "--out", str(saved[which]),
                               "--set", *overrides]
                    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                    if out.returncode:
                        sys.exit(f"{config} {precision} {which}: {out.stderr.strip()}")
                old, new = (torch.load(saved[w], weights_only=True) for w in ("old", "new"))
                same_keys = list(old["model"]) == list(new["model"])
                equal = same_keys and all(torch.equal(old["model"][k], new["model"][k]) for k in old["model"])
                print(f"RESULT kind=identity config={Path(config).stem} precision={precision} steps={args.steps} "
                      f"same_keys={same_keys} weights_identical={equal} "
                      f"losses_identical={old['losses'] == new['losses']} tensors={len(new['model'])} "
                      f"last_loss={new['losses'][-1]:.6f}", flush=True)


# ---------------------------------------------------------------- train step A/B


def step(model, loss_fn, batch, smoothing: float, precision, seed: int, clock) -> tuple[float, float]:
    """Forward, loss, backward under `precision` with dropout seeded by `seed`: (seconds, loss)."""
    import torch

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    start = clock()
    with precision.autocast():
        loss = loss_fn(model, batch, smoothing)
    loss.backward()
    return clock() - start, loss.item()


def train_ab(args: argparse.Namespace) -> None:
    clock = CLOCK[args.clock]
    old = import_baseline(args.baseline.resolve(), ("config", "models", "training"))
    new = import_checkout(ROOT, ("config", "models", "training"))
    import torch

    for config in args.config:
        for precision in args.precision:
            overrides = [f"train.precision={precision}", f"train.threads={args.threads}", "train.device=cpu"]
            with tempfile.TemporaryDirectory() as tmp:
                run = trainer(new, config, overrides, tmp)
            cfg, model = run.cfg, run.model.train()
            keys = new["config"].config_to_dict(cfg)["model"]  # flat, as YAML writes it: read by either checkout
            old_model = old["models"].build_model(old["config"].ModelConfig(**keys),
                                                  run.data.src_tokenizer.vocab_size, run.data.tgt_tokenizer.vocab_size)
            old_model.load_state_dict(model.state_dict())
            old_model.train()
            sides = {"old": (old_model, old["training"].batch_loss), "new": (model, new["training"].batch_loss)}
            work = batches(run, args.warmup + args.steps)
            seconds: dict[str, list[float]] = {"old": [], "new": []}
            tokens, same = [], 0
            for i, batch in enumerate(work):
                losses = {}
                for which in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    dt, losses[which] = step(*sides[which], batch, cfg.train.label_smoothing, run.precision, i, clock)
                    if i >= args.warmup:
                        seconds[which].append(dt)
                grads = zip(old_model.parameters(), model.parameters())
                same += losses["old"] == losses["new"] and all(torch.equal(a.grad, b.grad) for a, b in grads)
                if i >= args.warmup:
                    tokens.append(int(batch.tgt_out.ne(0).sum()))
            ratios = [o / n for o, n in zip(seconds["old"], seconds["new"])]
            old_tok_s, new_tok_s = (sum(tokens) / sum(seconds[w]) for w in ("old", "new"))
            print(f"RESULT kind=train-ab config={Path(config).stem} precision={precision} threads={args.threads} "
                  f"clock={args.clock} steps={args.steps} old_tok_s={old_tok_s:.1f} new_tok_s={new_tok_s:.1f} "
                  f"step_ratio_median={statistics.median(ratios):.3f} "
                  f"old_step_s_median={statistics.median(seconds['old']):.3f} "
                  f"new_step_s_median={statistics.median(seconds['new']):.3f} "
                  f"bit_identical_steps={same}/{len(work)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["identity", "train", "identity-child"])
    parser.add_argument("--baseline", type=Path, help="a checkout of the baseline commit")
    parser.add_argument("--config", nargs="+")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, help="updates (identity: 10) or timed steps (train: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="train: untimed steps first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCK), default="wall",
                        help="wall seconds, or the process's CPU seconds (steadier on a busy machine, with 1 thread)")
    parser.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "identity-child":
        return identity_child(args)
    if args.baseline is None:
        parser.error("--baseline is required")
    if args.what == "identity":
        args.config, args.steps = args.config or TOY + BENCH, args.steps or 10
        return identity(args)
    args.config, args.steps = args.config or BENCH, args.steps or 20
    train_ab(args)


if __name__ == "__main__":
    main()
