"""The README's toy-pair tables, regenerated from the commands they cite, and checked against the README.

    python docs/readme_tables.py run [--set KEY=VALUE ...]   train the five toy runs, evaluate and compare
                                                            them; write docs/readme-results.json and figures
    python docs/readme_tables.py render                     rewrite the README's generated blocks from it
    python docs/readme_tables.py check                      exit code 1 if the README differs from that

`make readme-tables` runs the first two (the five trainings take about 10 minutes on 2 CPU cores). Every
figure comes from `mtcli train`, `mtcli evaluate --json`, `mtcli compare --json` and `metrics.jsonl`; the
README's blocks between `<!-- generated: NAME -->` and `<!-- end: NAME -->` are written only from
readme-results.json, and tests/test_readme.py fails when they are not (or when their layout is not this
script's). `--set` overrides reach every `mtcli train` (e.g. a tiny setting to try the script).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "readme-results.json"
README = ROOT / "README.md"

# (run name, config, overrides): the runs of experiments/toy-length.sh, in the order of its compare
RUNS = [("toy-seq2seq", "experiments/toy-seq2seq.yaml", []),
        ("toy-attention", "experiments/toy-attention.yaml", []),
        ("toy-attention-dot", "experiments/toy-attention.yaml", ["model.attention=dot"]),
        ("toy-attention-general", "experiments/toy-attention.yaml", ["model.attention=general"]),
        ("toy-transformer", "experiments/toy-transformer.yaml", [])]
TOY_TABLE = ("toy-seq2seq", "toy-attention", "toy-transformer")  # the first table: one run per backend

HEADERS = {
    "toy-results": ["| experiment | parameters | `mtcli train` wall-clock | training tok/s | dev BLEU (greedy) | "
                    "test BLEU | test chrF2 | test TER |", "|---|---:|---:|---:|---:|---:|---:|---:|"],
    "toy-compare": ["| run | backend | BLEU | p | chrF2 | TER | parameters | training time | tok/s |",
                    "|---|---|---:|---:|---:|---:|---:|---:|---:|"],
    "toy-length": None,  # one column per run: written from the runs (see length_table)
    "toy-alignment": ["| run | attention map | AER % | accuracy % |", "|---|---|---:|---:|"],
}


# ---------------------------------------------------------------- run: the commands the README cites


def mtcli(*args: str, out: Path | None = None) -> str:
    """Run `mtcli ARGS` from the project folder; its stdout (also written to `out`)."""
    done = subprocess.run([sys.executable, "-m", "mtcli", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mtcli {' '.join(args)} failed:\n{done.stderr}")
    if out is not None:
        out.write_text(done.stdout, encoding="utf-8")
    return done.stdout


def relative(result: dict) -> dict:
    """An evaluate record with its checkpoint named relative to the project (no path of this machine)."""
    path = Path(result["checkpoint"])
    return {**result, "checkpoint": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name}


def run_record(run_dir: Path) -> dict:
    """From the run's metrics.jsonl: steps, training time and speed, the best greedy dev BLEU."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    end = [r for r in records if r["event"] == "end"][-1]
    validations = [r for r in records if r["event"] == "validation"]
    return {"steps": end["step"], "train_seconds": end["train_seconds"], "tokens_per_s": end["tokens_per_s"],
            "dev_bleu_greedy": max(v["bleu"] for v in validations)}


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain",
                                                                                    "mtcli") else "")


def run(runs_dir: Path, sets: list[str], results: Path, figures: Path) -> dict:
    overrides = [arg for text in sets for arg in ("--set", text)]
    data = {"generated": time.strftime("%Y-%m-%d"), "commit": commit(), "torch": metadata.version("torch"),
            "cpu_cores": os.cpu_count(), "overrides": sets, "runs": {}}
    for name, config, extra in RUNS:
        run_dir = runs_dir / name
        start = time.perf_counter()
        mtcli("train", config, "--restart", "--set", f"name={name}", "--set", f"run_dir={run_dir}",
              *[arg for text in extra for arg in ("--set", text)], *overrides)
        record = {"config": config, "overrides": extra, "wall_seconds": round(time.perf_counter() - start, 1),
                  **run_record(run_dir)}
        if name in TOY_TABLE:
            record["test"] = relative(json.loads(mtcli("evaluate", str(run_dir), "--json")))
            record["test_greedy"] = relative(json.loads(mtcli("evaluate", str(run_dir), "--json", "--beam", "1")))
        data["runs"][name] = record
        print(f"{name}: {record['steps']} steps, {record['wall_seconds']} s", flush=True)
    paths = [str(runs_dir / name) for name, _, _ in RUNS]
    data["compare"] = json.loads(mtcli("compare", *paths, "-o", str(figures / "toy-length.png"), "--json"))
    mtcli("visualize", "--curves", *[str(runs_dir / name) for name in TOY_TABLE], "-o",
          str(figures / "toy-curves.png"))
    results.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


# ---------------------------------------------------------------- render: results -> README blocks


def _ci(metric: dict) -> str:
    return f"{metric['mean']:.2f} ± {metric['ci95']:.2f}"


def _p(metric: dict) -> str:
    return "–" if metric["p_value"] is None else f"{metric['p_value']:.4f}".rstrip("0")


def _short(backend: str) -> str:
    """'attention (dot)' -> 'dot', 'transformer' -> 'transformer': a column label."""
    found = re.search(r"\((\w+)\)", backend)
    return found.group(1) if found else backend


def toy_table(data: dict) -> list[str]:
    compared = {r["name"]: r for r in data["compare"]["runs"]}
    lines = list(HEADERS["toy-results"])
    for name in TOY_TABLE:
        run, test, greedy = data["runs"][name], data["runs"][name]["test"], data["runs"][name]["test_greedy"]
        lines.append(f"| {name} ({run['steps']:,} steps) | {compared[name]['parameters']:,} | "
                     f"{run['wall_seconds']:.0f} s | {run['tokens_per_s']:,.0f} | {run['dev_bleu_greedy']:.2f} | "
                     f"{test['bleu']['score']:.2f} ({greedy['bleu']['score']:.2f}) | {test['chrf']['score']:.2f} | "
                     f"{test['ter']['score']:.2f} |")
    test = data["runs"][TOY_TABLE[0]]["test"]
    lines += ["", f"Signatures: BLEU `{test['bleu']['signature']}`,", f"chrF2 `{test['chrf']['signature']}`,",
              f"TER `{test['ter']['signature']}`.", "",
              f"Generated by `make readme-tables` on {data['generated']} (commit {data['commit']}, torch "
              f"{data['torch']}, {data['cpu_cores']} CPU cores" + (f"; overrides {', '.join(data['overrides'])}"
                                                                  if data["overrides"] else "") + ")."]
    return lines


def compare_table(data: dict) -> list[str]:
    lines = list(HEADERS["toy-compare"])
    for run in data["compare"]["runs"]:
        scores = f"{_ci(run['bleu'])} | {_p(run['bleu'])} | {_ci(run['chrf'])} | {_ci(run['ter'])}"
        lines.append(f"| {run['name']} | {run['backend']} | {scores} | {run['parameters']:,} | "
                     f"{run['train_seconds']:,.0f} s | {run['tokens_per_s']:,.0f} |")
    return lines


def length_table(data: dict) -> list[str]:
    runs = data["compare"]["runs"]
    lines = ["| source words | sentences | " + " | ".join(_short(r["backend"]) for r in runs) + " |",
             "|---|---:|" + "---:|" * len(runs)]
    for i, bucket in enumerate(runs[0]["bleu_by_length"]):
        cells = ["–" if r["bleu_by_length"][i]["bleu"] is None else f"{r['bleu_by_length'][i]['bleu']:.2f}"
                 for r in runs]
        words = bucket["source_words"].replace("-", "–")
        lines.append(f"| {words} | {bucket['sentences']} | " + " | ".join(cells) + " |")
    return lines


def alignment_table(data: dict) -> list[str]:
    lines = list(HEADERS["toy-alignment"])
    for run in data["compare"]["runs"]:
        found = run["alignment"]
        if not found:
            continue
        label = (_short(run["backend"]) if found["map"] == "attention"
                 else f"cross-attention, {found['map']}")
        lines.append(f"| {run['name']} | {label} | {found['aer']:.2f} | {found['accuracy']:.2f} |")
        if found.get("best_head"):
            head = found["best_head"]
            layer, number = re.fullmatch(r"layer (\d+) head (\d+)", head["map"]).groups()
            lines.append(f"| {run['name']} | best single head (layer {layer}, head {number}) | {head['aer']:.2f} | "
                         f"{head['accuracy']:.2f} |")
    return lines


def render(data: dict) -> dict[str, list[str]]:
    return {"toy-results": toy_table(data), "toy-compare": compare_table(data), "toy-length": length_table(data),
            "toy-alignment": alignment_table(data)}


BLOCK = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n(?P<body>.*?)\n<!-- end: (?P=name) -->", re.S)


def blocks(text: str) -> dict[str, list[str]]:
    """The generated blocks of a README, by name, as lines."""
    return {m["name"]: m["body"].split("\n") for m in BLOCK.finditer(text)}


def rewrite(text: str, rendered: dict[str, list[str]]) -> str:
    missing = set(rendered) - set(blocks(text))
    if missing:
        sys.exit(f"the README has no generated block for {', '.join(sorted(missing))}")
    return BLOCK.sub(lambda m: f"<!-- generated: {m['name']} -->\n" + "\n".join(rendered[m["name"]])
                     + f"\n<!-- end: {m['name']} -->", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["run", "render", "check"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every mtcli train (run)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "readme", help="folder for the runs (run)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs", help="folder for the figures (run)")
    parser.add_argument("--readme", type=Path, default=README, help="the README to render into or check")
    args = parser.parse_args()
    if args.step == "run":
        run(args.runs, args.sets, args.results, args.figures)
        return
    text = args.readme.read_text(encoding="utf-8")
    new = rewrite(text, render(json.loads(args.results.read_text(encoding="utf-8"))))
    if args.step == "render":
        args.readme.write_text(new, encoding="utf-8")
    elif new != text:
        sys.exit(f"{args.readme}: the generated tables differ from {args.results}: run "
                 "`python docs/readme_tables.py render`")


if __name__ == "__main__":
    main()
