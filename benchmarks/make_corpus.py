"""A large synthetic parallel corpus of Multi30k-length sentences, for the data-scale benchmark.

Pair k is Multi30k training pair k mod 29,000; every copy after the first has the words of each side in a
seeded random order and one word replaced by a random word of that side's vocabulary, so lines differ
from each other while keeping Multi30k's lengths and word statistics. Nothing is downloaded.

    python benchmarks/make_corpus.py OUT_DIR --pairs 3000000 [--data ../shared/data/multi30k] [--gzip]

writes OUT_DIR/train.{de,en} (or .gz) and copies val and test2016 (the first --dev-lines lines of val).
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variant(words: list[str], vocab: list[str], rng: random.Random) -> str:
    words = words[:]
    rng.shuffle(words)
    words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pairs", type=int, required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--dev-lines", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gzip", action="store_true", help="write train.*.gz")
    args = parser.parse_args()

    start = time.perf_counter()
    sides = [(args.data / f"train.{lang}").read_text(encoding="utf-8").splitlines() for lang in (args.src, args.tgt)]
    words = [[line.split() or ["."] for line in side] for side in sides]
    vocabs = [[w for line in side for w in line] for side in words]  # drawn by frequency
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    opener = (lambda p: gzip.open(p, "wt", encoding="utf-8", compresslevel=1)) if args.gzip else (
        lambda p: open(p, "w", encoding="utf-8"))
    suffix = ".gz" if args.gzip else ""
    outs = [opener(args.out / f"train.{lang}{suffix}") for lang in (args.src, args.tgt)]
    n = len(sides[0])
    block: list[list[str]] = [[], []]
    for k in range(args.pairs):
        base, copy = k % n, k // n
        for side in (0, 1):
            line = sides[side][base] if copy == 0 else variant(words[side][base], vocabs[side], rng)
            block[side].append(line)
        if len(block[0]) == 100_000:
            for out, lines in zip(outs, block):
                out.write("\n".join(lines) + "\n")
            block = [[], []]
    for out, lines in zip(outs, block):
        if lines:
            out.write("\n".join(lines) + "\n")
        out.close()
    for lang in (args.src, args.tgt):
        val = (args.data / f"val.{lang}").read_text(encoding="utf-8").splitlines()[: args.dev_lines]
        (args.out / f"val.{lang}").write_text("\n".join(val) + "\n", encoding="utf-8")
        shutil.copyfile(args.data / f"test2016.{lang}", args.out / f"test2016.{lang}")
    print(f"{args.pairs:,} pairs in {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
