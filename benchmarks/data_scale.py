"""The data path at scale: start-up time, memory and preparation speed on large synthetic corpora.

    python benchmarks/data_scale.py                       # 0.3M, 3M and 10M pairs (~40 min on 2 cores)
    python benchmarks/data_scale.py --sizes 100000 --old /path/to/an/older/checkout   # side by side

For every size it makes a synthetic corpus (benchmarks/make_corpus.py: Multi30k-length sentences), then runs
`mtcli train experiments/bench-transformer.yaml` on it for --steps updates, twice: with an empty
prepared-data cache (cold start) and again (cache hit). It prints one RESULT line per run: seconds from the
command's start to its first training step (the first update included), and memory sampled every 50 ms
from /proc: the peak of private memory (RssAnon) before and after the first step, and the peak RSS
(VmHWM), which also counts the pages of memory-mapped files (shared, reclaimable page cache). With
--torchrun N, 2 processes train on the N-pair corpus (each process's peaks). The largest size is also
prepared with `mtcli data prepare` (preparation time, peak RSS, encoding pairs/s) and, where fairseq is
installed (../shared/bench: $ANCHORS/fairseq), binarized by `fairseq-preprocess --workers 2` from the same
sentencepiece pieces. --old DIR runs the cold start of the code in DIR (an older checkout) as well.
Run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments/bench-transformer.yaml"
FAIRSEQ = Path(os.environ.get("ANCHORS", Path.home() / ".cache/mtcli-peers")) / "fairseq"


def result(**fields) -> None:
    print("RESULT tool=mtcli " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in fields.items()), flush=True)


def status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS and RssAnon of a process, in MB (empty once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) // 1024
    return out


def descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                children.append(int(entry.name))
    return children + [d for c in children for d in descendants(c)]


class Sampler(threading.Thread):
    """Peaks of RssAnon (split at the moment `mark()` is called) and VmHWM of a process tree's Python
    processes, sampled every 50 ms."""

    def __init__(self, pid: int, tree: bool = False):
        super().__init__(daemon=True)
        self.pid, self.tree, self.stop = pid, tree, threading.Event()
        self.phase = "before"
        self.peaks: dict[int, dict[str, int]] = {}

    def mark(self) -> None:
        self.phase = "after"

    def run(self) -> None:
        pids, tick = [self.pid], 0
        while not self.stop.is_set():
            if self.tree and tick % 20 == 0:  # a walk of /proc costs CPU: the process tree is re-read once a second
                pids = [self.pid] + descendants(self.pid)
            tick += 1
            for pid in pids:
                s = status(pid)
                if not s:
                    continue
                peak = self.peaks.setdefault(pid, {"before": 0, "after": 0, "hwm": 0})
                peak[self.phase] = max(peak[self.phase], s["RssAnon"])
                peak["hwm"] = max(peak["hwm"], s["VmHWM"])
            time.sleep(0.05)


def first_step_time(metrics: Path) -> float | None:
    if not metrics.is_file():
        return None
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "step":
            return record["time"]
    return None


def train_run(command: list[str], run_dir: Path, env: dict, tree: bool = False, cwd: Path = ROOT) -> dict:
    """Run a training command; seconds to its first step and the memory peaks of its process(es)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.time()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, tree)
    sampler.start()
    first = None
    while proc.poll() is None:
        if first is None and (first := first_step_time(run_dir / "metrics.jsonl")) is not None:
            sampler.mark()
        time.sleep(0.05)
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"{' '.join(command)}: exit code {proc.returncode}: {proc.stderr.read().strip()[-500:]}")
    first = first or first_step_time(run_dir / "metrics.jsonl")
    workers = [p for pid, p in sampler.peaks.items() if pid != proc.pid] if tree else [sampler.peaks[proc.pid]]
    return {"first_step_s": first - start, "wall_s": time.time() - start, "peaks": workers}


def mtcli_train(python: str, corpus: Path, run_dir: Path, steps: int, root: Path = ROOT) -> list[str]:
    return [python, "-m", "mtcli", "train", str(root / CONFIG.relative_to(ROOT)), "--set", f"data.dir={corpus}",
            "--set", f"run_dir={run_dir}", "--set", f"train.max_steps={steps}", "--set", "train.log_every=1", "--set",
            "train.validate_every=1000000", "--set", "train.max_minutes=0", "--set", "train.samples=0"]


def report_run(label: str, size: int, record: dict, **extra) -> None:
    for rank, peak in enumerate(record["peaks"]):
        result(kind="data-start", run=label, pairs=size, **({"process": rank} if len(record["peaks"]) > 1 else {}),
               first_step_s=record["first_step_s"], wall_s=record["wall_s"],
               private_mb_before_first_step=peak["before"], private_mb_training=peak["after"],
               max_rss_mb=peak["hwm"], **extra)


def corpus_for(size: int, work: Path) -> Path:
    folder = work / f"corpus-{size}"
    if not (folder / "val.en").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks/make_corpus.py"), str(folder), "--pairs", str(size)],
                       check=True)
    return folder


def measured(label: str, command: list[str], env: dict, tree: bool = False) -> tuple[float, dict]:
    """Run a command to its end: wall seconds and the memory peaks of its process (tree), by pid."""
    start = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, tree)
    sampler.start()
    proc.wait()
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"{label}: {proc.stderr.read().strip()[-500:]}")
    return time.time() - start, sampler.peaks


def prepare_and_fairseq(size: int, corpus: Path, work: Path, env: dict) -> None:
    cache = work / "cache-prepare"
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "mtcli", "data", "prepare", str(CONFIG), "--set", f"data.dir={corpus}",
               "--set", f"data.cache_dir={cache}"]
    wall, peaks = measured("data prepare", command, env)
    vocab = json.loads(next(cache.glob("vocabulary-*/meta.json")).read_text())
    corpus_meta = json.loads(next(cache.glob("corpus-*/meta.json")).read_text())
    peak = next(iter(peaks.values()))
    result(kind="data-prepare", pairs=size, wall_s=wall, vocabulary_s=vocab["seconds"],
           encode_s=corpus_meta["seconds"], encode_pairs_s=size / corpus_meta["seconds"], max_rss_mb=peak["hwm"],
           private_mb=peak["before"])
    fairseq_preprocess(size, corpus, next(cache.glob("vocabulary-*")), work)


def fairseq_preprocess(size: int, corpus: Path, vocabulary: Path, work: Path) -> None:
    binary = FAIRSEQ / "bin/fairseq-preprocess"
    if not binary.is_file():
        print(f"# no fairseq at {FAIRSEQ}: fairseq-preprocess not run", flush=True)
        return
    import sentencepiece as spm

    pieced = work / "pieced"
    shutil.rmtree(pieced, ignore_errors=True)
    pieced.mkdir()
    sp = spm.SentencePieceProcessor(model_file=str(vocabulary / "src.model"))
    for lang in ("de", "en"):  # the same pieces as mtcli's ids (not timed)
        with (corpus / f"train.{lang}").open(encoding="utf-8") as src, (pieced / f"train.{lang}").open("w") as out:
            while lines := src.readlines(1 << 24):
                for pieces in sp.encode([line.strip() for line in lines], out_type=str, num_threads=2):
                    out.write(" ".join(pieces) + "\n")
    with (pieced / "dict.txt").open("w") as out:
        out.writelines(f"{sp.id_to_piece(i)} 1\n" for i in range(4, sp.get_piece_size()))
    env = dict(os.environ, PYTHONPATH=str(ROOT.parent / "shared/bench/patches/fairseq"), PYTHONWARNINGS="ignore")
    command = [str(binary), "--source-lang", "de", "--target-lang", "en", "--trainpref", str(pieced / "train"),
               "--destdir", str(work / "fairseq-bin"), "--srcdict", str(pieced / "dict.txt"), "--joined-dictionary",
               "--workers", "2", "--dataset-impl", "mmap"]
    shutil.rmtree(work / "fairseq-bin", ignore_errors=True)
    wall, peaks = measured("fairseq-preprocess", command, env, tree=True)
    result(kind="data-prepare", tool_run="fairseq-preprocess-workers2", pairs=size, wall_s=wall,
           pairs_s=size / wall, max_rss_mb=max(p["hwm"] for p in peaks.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="300000,3000000,10000000")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mtcli-data-scale"))
    parser.add_argument("--old", type=Path, help="an older checkout: its cold start is measured too")
    parser.add_argument("--old-sizes", default="300000,3000000", help="sizes for --old")
    parser.add_argument("--torchrun", type=int, default=3000000, help="corpus size for 2 processes (0: none)")
    parser.add_argument("--skip-prepare", action="store_true", help="no data prepare / fairseq run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for size in sizes:
        corpus = corpus_for(size, args.work)
        cache = args.work / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        run_env = dict(env, MTCLI_CACHE=str(cache))
        command = mtcli_train(sys.executable, corpus, args.work / "run", args.steps)
        report_run("cold", size, train_run(command, args.work / "run", run_env))
        report_run("cache-hit", size, train_run(command, args.work / "run", run_env))
        if args.old and str(size) in args.old_sizes.split(","):
            # `python -m` puts the working folder first on sys.path: the old code runs from its own folder
            old_env = dict(env, PYTHONPATH=str(args.old))
            old = mtcli_train(sys.executable, corpus, args.work / "run", args.steps, args.old)
            report_run("old-code", size, train_run(old, args.work / "run", old_env, cwd=args.old), code=args.old)
        if size == args.torchrun:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        *command[1:]]
            report_run("torchrun-2", size, train_run(torchrun, args.work / "run", run_env, tree=True))
        shutil.rmtree(cache, ignore_errors=True)
    if not args.skip_prepare:
        prepare_and_fairseq(sizes[-1], corpus_for(sizes[-1], args.work), args.work, env)


if __name__ == "__main__":
    main()
