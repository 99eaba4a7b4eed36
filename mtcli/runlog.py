"""The run folder's record of training: `train.log` (text) and `metrics.jsonl` (one JSON object per event).

A training callback; plain files only, no terminal. Each record is appended whole or not at all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mtcli.files import append_line, writing
from mtcli.training import Callback, EndEvent, StartEvent, StepEvent, ValidationEvent


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order."""
    return parse_records(path.read_text(encoding="utf-8", errors="replace").splitlines())


def parse_records(lines: list[str]) -> list[dict[str, Any]]:
    """The records of metrics.jsonl lines; a line cut short by a killed process is skipped."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class RunLog(Callback):
    def __init__(self, run_dir: Path):
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path, self.metrics_path = run_dir / "train.log", run_dir / "metrics.jsonl"

    def _write(self, line: str, record: dict[str, Any]) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        append_line(self.log_path, f"{stamp} {line}")
        append_line(self.metrics_path, json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False))

    def on_start(self, e: StartEvent) -> None:
        what = f"resumed at step {e.resumed_step}" if e.resumed_step else "started"
        self._write(f"{e.config.name}: {what}; {e.config.model.backend}, {e.parameters:,} parameters, "
                    f"device {e.device}, {e.train_pairs} train / {e.dev_pairs} dev pairs; " + "; ".join(e.notes),
                    {"event": "start", "name": e.config.name, "backend": e.config.model.backend,
                     "parameters": e.parameters, "train_pairs": e.train_pairs, "dev_pairs": e.dev_pairs,
                     "total_steps": e.total_steps, "device": e.device, "resumed_step": e.resumed_step,
                     "notes": e.notes})

    def on_step(self, e: StepEvent) -> None:
        self._write(f"step {e.step} epoch {e.epoch}: loss {e.loss:.4f} lr {e.lr:.3g} "
                    f"{e.tokens_per_s:,.0f} tok/s elapsed {e.elapsed:.0f}s",
                    {"event": "step", "step": e.step, "epoch": e.epoch, "loss": round(e.loss, 5), "lr": e.lr,
                     "tokens_per_s": round(e.tokens_per_s, 1), "elapsed": round(e.elapsed, 2)})

    def on_validation(self, e: ValidationEvent) -> None:
        best = " (best)" if e.is_best else f" (best {e.best_value:.2f} at step {e.best_step})"
        self._write(f"validation step {e.step}: dev loss {e.loss:.4f} ppl {e.ppl:.2f} BLEU {e.bleu.score:.2f}{best} "
                    f"[{e.bleu.signature}]",
                    {"event": "validation", "step": e.step, "epoch": e.epoch, "loss": round(e.loss, 5),
                     "ppl": round(e.ppl, 3), "bleu": e.bleu.score, "bleu_signature": e.bleu.signature,
                     "metric": e.metric, "value": e.value, "is_best": e.is_best, "seconds": round(e.seconds, 2),
                     "elapsed": round(e.elapsed, 2),
                     "samples": [{"src": s, "ref": r, "hyp": h} for s, r, h in e.samples]})

    def on_end(self, e: EndEvent) -> None:
        self._write(f"finished ({e.reason}) at step {e.step}: best {e.metric} {e.best_value} at step {e.best_step}; "
                    f"{e.train_seconds:.0f}s training, {e.tokens_per_s:,.0f} tok/s",
                    {"event": "end", "step": e.step, "epoch": e.epoch, "reason": e.reason, "metric": e.metric,
                     "best_value": e.best_value, "best_step": e.best_step,
                     "train_seconds": round(e.train_seconds, 2), "tokens_per_s": round(e.tokens_per_s, 1),
                     "checkpoint": str(e.checkpoint) if e.checkpoint else None})
