"""The training loop: batches -> loss -> updates, validation with sacreBLEU, checkpoints, early stopping.

It reports only through callbacks (events below) and never imports Rich; the CLI decides what to show.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mtcli.checkpoint import BEST, LATEST, read_checkpoint, save_checkpoint
from mtcli.config import ExperimentConfig, TrainConfig, config_to_dict, dump_config
from mtcli.data.batching import Batch, collate, iterate_batches, pair_length, token_batches
from mtcli.data.dataset import PreparedData, prepare_data
from mtcli.data.tokenizers import PAD, tokenizer_from_state
from mtcli.errors import ConfigError
from mtcli.inference import decode_examples
from mtcli.metrics import Score, bleu, chrf
from mtcli.models import Backend, build_model

# ---------------------------------------------------------------- events


@dataclass
class StartEvent:
    run_dir: Path
    config: ExperimentConfig
    parameters: int
    train_pairs: int
    dev_pairs: int
    total_steps: int  # the step at which training will stop at the latest (estimate with max_minutes)
    device: str
    notes: list[str]
    resumed_step: int = 0


@dataclass
class StepEvent:
    step: int
    epoch: int
    loss: float  # training loss per target token (label-smoothed), mean over the interval
    lr: float
    tokens_per_s: float  # target tokens per second over the interval
    elapsed: float  # training seconds so far (validation excluded)
    total_steps: int


@dataclass
class ValidationEvent:
    step: int
    epoch: int
    loss: float  # dev cross-entropy per target token (no smoothing)
    ppl: float
    bleu: Score
    samples: list[tuple[str, str, str]]  # (source, reference, hypothesis)
    metric: str
    value: float
    best_value: float
    best_step: int
    is_best: bool
    bad_validations: int
    seconds: float  # time this validation took


@dataclass
class EndEvent:
    step: int
    epoch: int
    reason: str  # max_steps, max_epochs, max_minutes, early_stopping, interrupted
    metric: str
    best_value: float | None
    best_step: int
    train_seconds: float
    tokens_per_s: float
    checkpoint: Path | None


class Callback:
    """Receives the training events; every method is optional."""

    def on_start(self, event: StartEvent) -> None: ...

    def on_step(self, event: StepEvent) -> None: ...

    def on_validation(self, event: ValidationEvent) -> None: ...

    def on_end(self, event: EndEvent) -> None: ...


# ---------------------------------------------------------------- learning rate


class Schedule:
    """Linear warmup, then constant, inverse square root decay, or cuts on a validation plateau."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.scale = 1.0  # plateau cuts so far
        self.bad = 0

    def lr(self, step: int) -> float:
        cfg, warm = self.cfg, max(self.cfg.warmup_steps, 1)
        factor = min(1.0, step / warm)
        if cfg.scheduler == "inverse_sqrt" and step > warm:
            factor = math.sqrt(warm / step)
        return max(cfg.lr * factor * self.scale, cfg.min_lr if step >= warm else 0.0)

    def validated(self, improved: bool) -> None:
        if self.cfg.scheduler != "plateau":
            return
        self.bad = 0 if improved else self.bad + 1
        if self.bad > self.cfg.plateau_patience:
            self.scale *= self.cfg.plateau_factor
            self.bad = 0

    def state(self) -> dict:
        return {"scale": self.scale, "bad": self.bad}

    def load(self, state: dict) -> None:
        self.scale, self.bad = state["scale"], state["bad"]


# ---------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def batch_loss(model: Backend, batch: Batch, smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over the batch's real target tokens."""
    logits = model(batch.src, batch.src_mask, batch.tgt_in)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD,
                           label_smoothing=smoothing, reduction="sum")


@torch.no_grad()
def dev_loss(model: Backend, batches: list[Batch], device: torch.device) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        total += float(batch_loss(model, batch.to(device), 0.0))
        tokens += batch.n_tgt_tokens
    model.train()
    return total / max(tokens, 1)


def better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


# ---------------------------------------------------------------- the loop


@dataclass
class Progress:
    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    best_value: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    train_seconds: float = 0.0
    tokens: int = 0


class Trainer:
    def __init__(self, cfg: ExperimentConfig, callbacks: list[Callback], restart: bool = False):
        self.cfg, self.callbacks = cfg, callbacks
        self.run_dir = cfg.run_path
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        resume = None if restart else self._resumable()
        tokenizers = None
        if resume is not None:
            tokenizers = (tokenizer_from_state(resume["tokenizers"]["src"]),
                          tokenizer_from_state(resume["tokenizers"]["tgt"]))
        self.data: PreparedData = prepare_data(cfg.data, cfg.train.seed, tokenizers)
        self.dev_batches = iterate_batches(self.data.dev, cfg.train.batch_tokens)  # collated once, reused
        self.train_lengths = [pair_length(e) for e in self.data.train]
        self.train_src_lengths = [len(e.src) for e in self.data.train]
        self.batches_per_epoch = len(self._epoch_batches(1))  # the same for every epoch
        self.model = build_model(cfg.model, self.data.src_tokenizer.vocab_size, self.data.tgt_tokenizer.vocab_size)
        self.model.to(self.device).train()
        optim = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optim(self.model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
                               weight_decay=cfg.train.weight_decay)
        self.schedule = Schedule(cfg.train)
        self.progress = Progress()
        if resume is not None:
            self._restore(resume)

    # ----- resume

    def _resumable(self) -> dict | None:
        path = self.run_dir / LATEST
        if not path.is_file():
            return None
        data = read_checkpoint(path)
        stored = data["config"]
        now = config_to_dict(self.cfg)
        for section in ("data", "model"):
            if stored.get(section) != now[section]:
                raise ConfigError(f"{self.run_dir}: holds a run with a different {section} section; "
                                  "pass --restart to start it over, or set run_dir to a new folder")
        return data

    def _restore(self, data: dict) -> None:
        self.model.load_state_dict(data["model"])
        state = data["training"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load(state["schedule"])
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"])

    def _training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state(),
                "progress": vars(self.progress).copy(), "rng": torch.get_rng_state()}

    def _save(self, name: str) -> Path:
        path = self.run_dir / name
        meta = {"step": self.progress.step, "epoch": self.progress.epoch, "metric": self.cfg.train.best_metric,
                "best_value": self.progress.best_value, "best_step": self.progress.best_step,
                "parameters": self.model.parameter_count(), "train_seconds": round(self.progress.train_seconds, 1)}
        save_checkpoint(path, self.model, self.cfg, self.data.src_tokenizer, self.data.tgt_tokenizer, meta,
                        self._training_state() if name == LATEST else None)
        return path

    # ----- events

    def emit(self, name: str, event: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, name)(event)

    # ----- validation

    def validate(self) -> ValidationEvent:
        cfg, start = self.cfg, time.perf_counter()
        loss = dev_loss(self.model, self.dev_batches, self.device)
        hyps = decode_examples(self.model, self.data.dev, cfg.decode, cfg.train.valid_beam_size)
        texts = [self.data.tgt_tokenizer.decode(h.tokens) for h in hyps]
        refs = self.data.dev_text.tgt
        score = bleu(texts, refs)
        value = {"bleu": lambda: score.score, "loss": lambda: loss,
                 "chrf": lambda: chrf(texts, refs).score}[cfg.train.best_metric]()
        progress = self.progress
        improved = better(cfg.train.best_metric, value, progress.best_value)
        if improved:
            progress.best_value, progress.best_step, progress.bad_validations = value, progress.step, 0
        else:
            progress.bad_validations += 1
        self.schedule.validated(improved)
        if improved:
            self._save(BEST)
        self._save(LATEST)
        samples = [(self.data.dev_text.src[i], refs[i], texts[i]) for i in range(min(cfg.train.samples, len(texts)))]
        return ValidationEvent(progress.step, progress.epoch, loss, math.exp(min(loss, 50.0)), score, samples,
                               cfg.train.best_metric, value, progress.best_value, progress.best_step, improved,
                               progress.bad_validations, time.perf_counter() - start)

    # ----- training

    def total_steps(self) -> int:
        """Where training stops at the latest: max_steps or max_epochs x batches per epoch (0: unknown)."""
        by_epochs = self.batches_per_epoch * self.cfg.train.max_epochs
        limits = [s for s in (by_epochs, self.cfg.train.max_steps) if s]
        return min(limits) if limits else 0

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The example indices of each batch of `epoch`: a pure function of (seed, epoch)."""
        return token_batches(self.train_lengths, self.cfg.train.batch_tokens, self.cfg.train.seed * 100003 + epoch,
                             self.train_src_lengths)

    def _stop_reason(self) -> str | None:
        cfg, p = self.cfg.train, self.progress
        if cfg.max_steps and p.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes and p.train_seconds >= cfg.max_minutes * 60:
            return "max_minutes"
        if cfg.patience and p.bad_validations >= cfg.patience:
            return "early_stopping"
        return None

    def run(self) -> EndEvent:
        cfg, p = self.cfg, self.progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        total = self.total_steps()
        self.emit("on_start", StartEvent(self.run_dir, cfg, self.model.parameter_count(), len(self.data.train),
                                         len(self.data.dev), total, str(self.device), self.data.notes, p.step))
        reason = self._stop_reason()
        validated_at = p.step if p.step else -1
        interval_loss, interval_tokens, interval_start = 0.0, 0, time.perf_counter()
        try:
            while reason is None:
                if p.batch_in_epoch >= self.batches_per_epoch:  # this epoch is done
                    if cfg.train.max_epochs and p.epoch >= cfg.train.max_epochs:
                        reason = "max_epochs"
                        break
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                    continue
                for index in self._epoch_batches(p.epoch)[p.batch_in_epoch:]:
                    batch = collate([self.data.train[i] for i in index], index)
                    loss = self._update(batch)
                    p.batch_in_epoch += 1
                    interval_loss += loss
                    interval_tokens += batch.n_tgt_tokens
                    if p.step % cfg.train.log_every == 0:
                        seconds = time.perf_counter() - interval_start
                        p.train_seconds += seconds
                        self.emit("on_step", StepEvent(p.step, p.epoch, interval_loss / max(interval_tokens, 1),
                                                       self.schedule.lr(p.step), interval_tokens / max(seconds, 1e-9),
                                                       p.train_seconds, total))
                        interval_loss, interval_tokens, interval_start = 0.0, 0, time.perf_counter()
                    if p.step % cfg.train.validate_every == 0:
                        p.train_seconds += time.perf_counter() - interval_start
                        self.emit("on_validation", self.validate())
                        validated_at = p.step
                        interval_loss, interval_tokens, interval_start = 0.0, 0, time.perf_counter()
                    reason = self._stop_reason()
                    if reason:
                        break
        except KeyboardInterrupt:
            reason = "interrupted"
        p.train_seconds += time.perf_counter() - interval_start
        if reason == "interrupted":
            self._save(LATEST)
        elif validated_at != p.step:
            self.emit("on_validation", self.validate())  # the final weights are validated and saved
        best = self.run_dir / BEST
        end = EndEvent(p.step, p.epoch, reason, cfg.train.best_metric, p.best_value, p.best_step, p.train_seconds,
                       p.tokens / max(p.train_seconds, 1e-9), best if best.is_file() else None)
        self.emit("on_end", end)
        return end

    def _update(self, batch: Batch) -> float:
        p = self.progress
        p.step += 1
        lr = self.schedule.lr(p.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(self.device)
        loss = batch_loss(self.model, batch, self.cfg.train.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / batch.n_tgt_tokens).backward()
        if self.cfg.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        self.optimizer.step()
        p.tokens += batch.n_tgt_tokens
        return loss.item()


def train(cfg: ExperimentConfig, callbacks: list[Callback] = (), restart: bool = False) -> EndEvent:
    return Trainer(cfg, list(callbacks), restart).run()
