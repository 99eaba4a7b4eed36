"""The training loop: batches -> loss -> updates, validation with sacreBLEU, checkpoints, early stopping.

It reports only through callbacks (events below) and never imports Rich; the CLI decides what to show.
One `train` per run folder at a time (a lock); a diverged model is never saved (see `Trainer.diverged`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtcli import checkpoint as ckpt
from mtcli import distributed
from mtcli.checkpoint import BEST, LATEST, pointed, read_checkpoint, resolve_checkpoint
from mtcli.config import ExperimentConfig, config_from_dict, config_to_dict, dump_config
from mtcli.data.batching import Batch, EpochPlan, iterate_batches
from mtcli.data.dataset import PreparedData, prepare_data
from mtcli.data.tokenizers import PAD, tokenizer_from_state
from mtcli.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MtcliError,
    ReportedElsewhere,
    TrainingError,
    WriteError,
)
from mtcli.files import atomic_write_text, describe_holder, folder_lock
from mtcli.inference import decode_examples
from mtcli.kernels.loss import output_loss
from mtcli.metrics import Score, lower_is_better, score
from mtcli.models import Backend, build_model
from mtcli.optim import Schedule, build_optimizer, weight_average
from mtcli.runtime import (
    Precision,
    StopSignals,
    limit_onednn_cache,
    release_freed_heap,
    resolve_device,
    resolve_precision,
)

# ---------------------------------------------------------------- events


@dataclass
class PrepareEvent:
    stage: str  # e.g. "training the sentencepiece vocabulary", "encoding <files>"
    done: int  # progress in the stage's own unit (bytes read, pairs)
    total: int


@dataclass
class StartEvent:
    run_dir: Path
    config: ExperimentConfig
    parameters: int
    train_pairs: int
    dev_pairs: int
    total_steps: int  # the step at which training will stop at the latest (estimate with max_minutes)
    device: str  # e.g. "cpu, bf16" or "cuda:0, fp16, 2 processes"
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
    elapsed: float  # training seconds so far (validation excluded), as in StepEvent


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
    checkpoint: Path | None  # best.pt, if there is one
    signal: str | None = None  # SIGINT or SIGTERM when interrupted
    saved: Path | None = None  # the last checkpoint written (on interruption: the final one)


class Callback:
    """Receives the training events; every method is optional."""

    def on_prepare(self, event: PrepareEvent) -> None: ...

    def on_start(self, event: StartEvent) -> None: ...

    def on_step(self, event: StepEvent) -> None: ...

    def on_validation(self, event: ValidationEvent) -> None: ...

    def on_end(self, event: EndEvent) -> None: ...


# ---------------------------------------------------------------- helpers


def batch_loss(model: Backend, batch: Batch, smoothing: float, net: torch.nn.Module | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's real target tokens, fused with the output layer (mtcli.kernels.loss).

    `net` runs the forward pass when it is not the model itself (the DistributedDataParallel wrapper)."""
    hidden = (net or model)(batch.src, batch.src_mask, batch.tgt_in, features_only=True)  # (B, T, D)
    return output_loss(hidden.flatten(0, 1), model.output.weight, batch.tgt_out.flatten(), PAD, smoothing)


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
    return value < best if lower_is_better(metric) else value > best


# What a second `train` on a run folder in use is told to do
RUN_LOCK_HINT = "wait for it to end, stop it, or train into another folder (--set run_dir=...)"

# Training has diverged when the loss per target token is not finite or above this many nats. A uniform
# guess over the vocabulary costs ln(V) nats (about 9 for 8,000 pieces) and a model that learns goes below
# that; 100 nats means probabilities of e^-100 on the right tokens, weights that have blown up.
DIVERGED_LOSS = 100.0


def divergence(loss: float, grad_norm: float | None = None) -> str | None:
    """Why these figures mean a diverged model ('the loss is nan'), or None while training is sound."""
    if not math.isfinite(loss) or loss > DIVERGED_LOSS:
        return f"the loss per target token is {loss:.4g}" + ("" if not math.isfinite(loss) else
                                                          f" (above {DIVERGED_LOSS:g})")
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"the gradient norm is {grad_norm}"
    return None




# ---------------------------------------------------------------- the loop


@dataclass
class Progress:
    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0  # batches of the current epoch already trained on, by all processes together
    best_value: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    train_seconds: float = 0.0
    tokens: int = 0
    checkpoints: list[dict] = field(default_factory=list)  # {"file", "step", "value"} of the kept step files


class Trainer:
    """One model trained on one process, or on each of torchrun's processes with DistributedDataParallel.

    Every process reads the data and builds the same batches; update k takes the next
    processes x accumulate batches and each process trains on its share of them. Only rank 0 emits
    events, validates and writes checkpoints; the stop decisions are agreed by all processes.
    """

    def __init__(self, cfg: ExperimentConfig, callbacks: list[Callback], restart: bool = False,
                 signals: StopSignals | None = None, held: contextlib.ExitStack | None = None):
        self.cfg, self.callbacks = cfg, callbacks
        self.notes: list[str] = []  # shown at the start beside the data's notes
        self.signals = signals or StopSignals()
        self.run_dir = cfg.run_path
        self.world = distributed.world_from_env()
        self.device = resolve_device(cfg.train.device, self.world)
        self.precision = Precision(resolve_precision(cfg.train.precision, self.device), self.device)
        if self.device.type == "cpu" and self.precision.name == "bf16":
            limit_onednn_cache()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        distributed.start(self.world, self.device)
        if held is not None:
            self._hold_run_folder(held)
        random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        resume = None if restart else self._resumable()
        start_from = self._start_from() if resume is None else None
        self.data = self._prepare_data(resume or start_from)
        release_freed_heap()
        self.dev_batches = iterate_batches(self.data.dev, cfg.train.batch_tokens)  # collated once, reused
        self._plan: tuple[int, EpochPlan] | None = None
        self.batches_per_epoch = self._batches_in(1)
        if not self.batches_per_epoch:
            raise DataError(f"data.train: {len(self.data.train)} training pairs make {len(self._epoch_plan(1))} "
                            f"batches of train.batch_tokens={cfg.train.batch_tokens}, fewer than the "
                            f"{self.world.size} processes; use fewer processes or smaller batches")
        self.model = build_model(cfg.model, self.data.src_tokenizer.vocab_size, self.data.tgt_tokenizer.vocab_size)
        if start_from is not None:
            self.model.load_state_dict(start_from["model"])
            self.notes.append(f"initialised from {start_from['path']} (step {start_from['meta'].get('step')}): "
                                   "its weights and vocabulary, a fresh optimizer and schedule")
        self.model.to(self.device).train()
        self.ema = weight_average(self.model, cfg.train.ema_decay)  # what validation and checkpoints hold
        self.net: torch.nn.Module = self.model
        if self.world.distributed:  # the same initial weights everywhere (DDP checks), then own dropout streams
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            torch.manual_seed(cfg.train.seed + 1_000_003 * self.world.rank)
        self.optimizer = build_optimizer(self.model, cfg.train, fused=self.device.type in ("cpu", "cuda"))
        self.schedule = Schedule(cfg.train, self.total_steps(), cfg.model.embed_dim)
        self.progress = Progress()
        self.saved_at = -1  # the step of the last checkpoint written or restored
        if resume is not None:
            self._restore(resume)

    # ----- data

    def _prepare_data(self, checkpoint: dict | None) -> PreparedData:
        """Prepare the data (or find it prepared) with the checkpoint's tokenizers when resuming or starting
        from a model. Under torchrun rank 0 prepares while the others wait (long timeout), then they find
        it in the cache, encoded with the tokenizers rank 0 sends round."""
        cfg, tokenizers = self.cfg, None
        progress = lambda stage, done, total: self.emit("on_prepare", PrepareEvent(stage, done, total))  # noqa: E731
        if checkpoint is not None:
            tokenizers = (tokenizer_from_state(checkpoint["tokenizers"]["src"]),
                          tokenizer_from_state(checkpoint["tokenizers"]["tgt"]))
        elif self.world.distributed:
            with distributed.patient_group(self.world) as group:
                data = prepare_data(cfg.data, None, progress) if self.world.main else None
                states = distributed.broadcast(
                    (data.src_tokenizer.state(), data.tgt_tokenizer.state()) if data else None, self.world, group)
            if data is not None:
                return data
            tokenizers = (tokenizer_from_state(states[0]), tokenizer_from_state(states[1]))
        return prepare_data(cfg.data, tokenizers, progress)

    def _epoch_plan(self, epoch: int) -> EpochPlan:
        """The batches of `epoch`, a pure function of (seed, epoch); kept while the epoch lasts."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.data.train.plan(self.cfg.train.batch_tokens, self.cfg.train.seed, epoch))
        return self._plan[1]

    def _batches_in(self, epoch: int) -> int:
        """Batches of `epoch` trained on: with N processes the last few (fewer than N) are left out so that
        every process gets the same number; the shuffle changes which ones from epoch to epoch."""
        batches = len(self._epoch_plan(epoch))
        return batches - batches % self.world.size

    def _groups(self) -> Iterator[list[np.ndarray]]:
        """The rest of this epoch's batches, `processes x accumulate` per update."""
        plan, size = self._epoch_plan(self.progress.epoch), self.world.size * self.cfg.train.accumulate
        start = self.progress.batch_in_epoch  # not a multiple of the processes after resuming with others
        rest = self._batches_in(self.progress.epoch) - start
        end = start + rest - rest % self.world.size
        for first in range(start, end, size):
            yield [plan.batch(k) for k in range(first, min(first + size, end))]

    def _start_from(self) -> dict | None:
        """train.init_from's checkpoint (fine-tuning: its weights and vocabulary), checked against the config."""
        if not self.cfg.train.init_from:
            return None
        path = resolve_checkpoint(self.cfg.train.init_from)
        data = read_checkpoint(path)
        stored = _normalised(data["config"], str(path))["model"]
        now = config_to_dict(self.cfg)["model"]
        for key, value in now.items():
            if key != "dropout" and stored[key] != value:
                raise ConfigError(f"train.init_from: {path} holds a model with model.{key}={stored[key]!r}, this "
                                  f"config has {value!r}; the model sections must match (only dropout may differ)")
        return {**data, "path": path}

    # ----- the run folder

    def _hold_run_folder(self, held: contextlib.ExitStack) -> None:
        """Rank 0 locks the run folder until `held` closes (one `train` per folder); every process learns
        whether it could, so that under torchrun none is left waiting for a rank 0 that has stopped."""
        failure = None
        if self.world.main:
            try:
                stale = held.enter_context(folder_lock(self.run_dir, "mtcli train", hint=RUN_LOCK_HINT))
            except MtcliError as exc:
                failure = exc
            else:
                if stale:
                    self.notes.append(f"took over the run folder from {describe_holder(stale)}, which ended "
                                      "without releasing it")
        if distributed.broadcast(failure is not None, self.world):
            raise failure or ReportedElsewhere("rank 0 could not take the run folder")

    # ----- resume

    def _resumable(self) -> dict | None:
        path = self.run_dir / LATEST
        if not path.is_file():
            return None
        data = read_checkpoint(path)
        stored = _normalised(data["config"], str(path))
        now = config_to_dict(self.cfg)
        for section in ("data", "model"):
            if _content(stored[section]) != _content(now[section]):
                raise ConfigError(f"{self.run_dir}: holds a run with a different {section} section; "
                                  "pass --restart to start it over, or set run_dir to a new folder")
        if not data.get("training"):
            raise CheckpointError(f"{path}: holds no training state to resume from; pass --restart")
        return data

    def _restore(self, data: dict) -> None:
        state = data["training"]
        self.model.load_state_dict(state.get("raw_model", data["model"]))  # with an EMA, "model" is the average
        if self.ema is not None:
            self.ema.module.load_state_dict(data["model"])
        self._restore_optimizer(state)
        self.schedule.load(state["schedule"])
        self.progress = Progress(**state["progress"])
        if state.get("scaler") and self.precision.scaler.is_enabled():
            self.precision.scaler.load_state_dict(state["scaler"])
        rng = state["rng"] if isinstance(state["rng"], list) else [{"torch": state["rng"]}]
        if len(rng) == self.world.size:  # the same processes as before: each continues its own random stream
            mine = rng[self.world.rank]
            torch.set_rng_state(mine["torch"])
            if mine.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:  # another number of processes: fresh, but still seeded, streams
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * self.world.rank + self.progress.step)
        self.saved_at = self.progress.step

    def _restore_optimizer(self, state: dict) -> None:
        """The stored optimizer state (moments, momentum buffers) under this config's settings (weight decay,
        betas, momentum); one line if the optimizer or its parameter groups changed since."""
        name, stored = self.cfg.train.optimizer, state.get("optimizer_name", self.cfg.train.optimizer)
        if stored != name:
            raise ConfigError(f"train.optimizer: the run in {self.run_dir} was trained with {stored}, not {name}; "
                              "resume with it, or pass --restart")
        groups = len(state["optimizer"]["param_groups"])
        if groups != len(self.optimizer.param_groups):
            raise ConfigError(f"train.weight_decay: the run in {self.run_dir} was trained with {groups} parameter "
                              f"group(s), this config makes {len(self.optimizer.param_groups)}: weight decay on norms, "
                              "biases and embeddings was switched (a run from before they were spared: set "
                              "train.decay_all: true); keep weight_decay and decay_all as they were, or pass --restart")
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])  # torch also restores the stored groups' settings ...
        for group, setting in zip(self.optimizer.param_groups, settings):
            group.update(setting)  # ... but the train section may change between segments: this config's win

    def _rng_state(self) -> dict:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    # ----- checkpoints

    def _save(self, value: float | None, improved: bool) -> Path | None:
        """Write checkpoints/step-N.pt (weights and the whole training state), move the pointers, prune.

        Collective: every process hands over its random state; rank 0 writes. A failed write (disk full,
        read-only) stops training with the previous checkpoints untouched; non-finite weights are never written.
        """
        if not all(bool(torch.isfinite(param).all()) for param in self.model.parameters()):
            raise self._diverged("the weights are not finite")
        rng = distributed.gather(self._rng_state(), self.world)
        self.saved_at = self.progress.step
        if not self.world.main:
            return None
        cfg, p = self.cfg.train, self.progress
        file = ckpt.step_file(p.step)
        entries = [e for e in p.checkpoints if e["file"] != file] + [{"file": file, "step": p.step, "value": value}]
        p.checkpoints = ckpt.kept_checkpoints(entries, cfg.keep_last, cfg.keep_best, lower_is_better(cfg.best_metric))
        training = {"optimizer": self.optimizer.state_dict(), "optimizer_name": cfg.optimizer,
                    "schedule": self.schedule.state(), "progress": copy.deepcopy(vars(p)), "rng": rng}
        if self.ema is not None:  # the checkpoint's weights are the average; these keep training
            training["raw_model"] = self.model.state_dict()
        if self.precision.scaler.is_enabled():
            training["scaler"] = self.precision.scaler.state_dict()
        meta = {"step": p.step, "epoch": p.epoch, "metric": cfg.best_metric, "value": value,
                "best_value": p.best_value, "best_step": p.best_step, "parameters": self.model.parameter_count(),
                "train_seconds": round(p.train_seconds, 1), "tokens": p.tokens, "precision": self.precision.name,
                "processes": self.world.size}
        path = self.run_dir / file
        try:
            ckpt.save_checkpoint(path, self.eval_model, self.cfg, self.data.src_tokenizer, self.data.tgt_tokenizer,
                                 meta, training)
            ckpt.point(self.run_dir, LATEST, file)
            if improved:
                ckpt.point(self.run_dir, BEST, file)
        except WriteError as exc:
            previous = pointed(self.run_dir, LATEST)
            kept = f"the previous checkpoint {self.run_dir / previous} is intact" if previous else "nothing saved"
            raise CheckpointError(f"{path}: could not write the checkpoint ({exc.cause}); {kept}") from None
        ckpt.prune(self.run_dir, p.checkpoints)
        return path

    def _diverged(self, why: str) -> TrainingError:
        """The one-line stop for a diverged run: what went wrong, and the checkpoint to resume from."""
        previous = pointed(self.run_dir, LATEST) if self.world.main else None
        again = "a lower train.lr (--set train.lr=...), a longer train.warmup_steps or train.clip_grad_norm"
        if previous:
            then = (f"the last sound checkpoint {self.run_dir / previous} is kept: run the same command "
                    f"to resume from it, with {again}")
        else:
            then = f"no checkpoint was written yet: start again with {again}"
        return TrainingError(f"training diverged at step {self.progress.step}: {why}; the diverged weights are "
                             f"not saved; {then}")

    # ----- events

    def emit(self, name: str, event: Any) -> None:
        if self.world.main:
            for callback in self.callbacks:
                getattr(callback, name)(event)

    # ----- validation

    @property
    def eval_model(self) -> Backend:
        """The weights that validation scores and checkpoints hold: their moving average with train.ema_decay."""
        return self.model if self.ema is None else self.ema.module

    def _dev_scores(self) -> tuple[float, Score, float, list[tuple[str, str, str]]]:
        """Rank 0: dev loss, BLEU, the selection metric's value and a few samples."""
        cfg = self.cfg
        loss = dev_loss(self.eval_model, self.dev_batches, self.device)
        decode = dataclasses.replace(cfg.decode, strategy="beam", beam_size=cfg.train.valid_beam_size, n_best=1)
        hyps = decode_examples(self.eval_model, self.data.dev, decode)
        texts = [self.data.tgt_tokenizer.decode(h[0].tokens) for h in hyps]
        sources, refs, metric = self.data.dev_text.src, self.data.dev_text.tgt, cfg.train.best_metric
        bleu = score("bleu", sources, texts, refs)
        value = loss if metric == "loss" else bleu.score if metric == "bleu" else \
            score(metric, sources, texts, refs).score
        samples = [(sources[i], refs[i], texts[i]) for i in range(min(cfg.train.samples, len(texts)))]
        return loss, bleu, value, samples

    def validate(self) -> None:
        """Validate (rank 0), agree on the result, checkpoint, report. Called by every process."""
        start, p, metric = time.perf_counter(), self.progress, self.cfg.train.best_metric
        scores = self._dev_scores() if self.world.main else None
        value, why = distributed.broadcast((scores[2], divergence(scores[0])) if scores else None, self.world)
        if why:
            raise self._diverged(f"on the dev set {why}")
        improved = better(metric, value, p.best_value)
        if improved:
            p.best_value, p.best_step, p.bad_validations = value, p.step, 0
        else:
            p.bad_validations += 1
        self.schedule.validated(improved)
        self._save(value, improved)
        if scores is not None:
            loss, score, _, samples = scores
            self.emit("on_validation", ValidationEvent(
                p.step, p.epoch, loss, math.exp(min(loss, 50.0)), score, samples, metric, value, p.best_value,
                p.best_step, improved, p.bad_validations, time.perf_counter() - start, p.train_seconds))

    # ----- training

    def total_steps(self) -> int:
        """Where training stops at the latest: max_steps or max_epochs x updates per epoch (0: unknown)."""
        per_update = self.world.size * self.cfg.train.accumulate
        by_epochs = -(-self.batches_per_epoch // per_update) * self.cfg.train.max_epochs  # from epoch 1
        limits = [s for s in (by_epochs, self.cfg.train.max_steps) if s]
        return min(limits) if limits else 0

    def _stop_reason(self) -> str | None:
        cfg, p = self.cfg.train, self.progress
        if cfg.max_steps and p.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes and p.train_seconds >= cfg.max_minutes * 60:
            return "max_minutes"
        if cfg.patience and p.bad_validations >= cfg.patience:
            return "early_stopping"
        return None

    def _device_text(self) -> str:
        parts = [str(self.device), self.precision.name]
        if self.world.distributed:
            parts.append(f"{self.world.size} processes")
        if self.cfg.train.accumulate > 1:
            parts.append(f"{self.cfg.train.accumulate} batches per update")
        return ", ".join(parts)

    def run(self) -> EndEvent:
        cfg, p = self.cfg, self.progress
        if self.world.main:
            ckpt.remove_partial_files(self.run_dir)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        total = self.total_steps()
        self.emit("on_start", StartEvent(self.run_dir, cfg, self.model.parameter_count(), len(self.data.train),
                                         len(self.data.dev), total, self._device_text(), self.data.notes + self.notes,
                                         p.step))
        reason = self._stop_reason()
        interval_loss, interval_tokens, interval_seconds = 0.0, 0, 0.0
        while reason is None:
            if p.batch_in_epoch >= self._batches_in(p.epoch):  # this epoch is done
                if cfg.train.max_epochs and p.epoch >= cfg.train.max_epochs:
                    reason = "max_epochs"
                    break
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                continue
            for group in self._groups():
                loss, tokens, seconds, stop = self._update(group)
                interval_loss, interval_tokens, interval_seconds = (interval_loss + loss, interval_tokens + tokens,
                                                                   interval_seconds + seconds)
                if p.step % cfg.train.log_every == 0:
                    self.emit("on_step", StepEvent(p.step, p.epoch, interval_loss / max(interval_tokens, 1),
                                                   self.schedule.lr(p.step),
                                                   interval_tokens / max(interval_seconds, 1e-9),
                                                   p.train_seconds, total))
                    interval_loss, interval_tokens, interval_seconds = 0.0, 0, 0.0
                if stop:
                    reason = "interrupted"
                    break
                if p.step % cfg.train.validate_every == 0:
                    self.validate()
                reason = self._stop_reason()
                if reason:
                    break
            else:
                p.batch_in_epoch = self._batches_in(p.epoch)  # a remainder too small for every process
        saved = None
        if reason == "interrupted":
            if self.saved_at != p.step:
                saved = self._save(None, False)
        elif self.saved_at != p.step:
            self.validate()  # the final weights are validated and saved
        best = self.run_dir / BEST
        if saved is None and self.world.main and (self.run_dir / LATEST).exists():
            saved = self.run_dir / LATEST
        end = EndEvent(p.step, p.epoch, reason, cfg.train.best_metric, p.best_value, p.best_step, p.train_seconds,
                       p.tokens / max(p.train_seconds, 1e-9), best if best.is_file() else None,
                       self.signals.name if reason == "interrupted" else None, saved)
        self.emit("on_end", end)
        return end

    def _update(self, group: list[list[int]]) -> tuple[float, int, float, bool]:
        """One optimizer step on `group` (this process trains on every N-th batch of it).

        Returns the summed loss and the target tokens of the whole group, the seconds it took, and
        whether any process was asked to stop. The loss is normalised by the group's target tokens,
        so N processes x k batches give the same gradient as one process accumulating N*k batches.
        """
        cfg, p, start = self.cfg.train, self.progress, time.perf_counter()
        p.step += 1
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.schedule.lr(p.step)
        batches = self._collate(group)
        tokens = self._target_tokens(group, batches)
        scale = self.world.size / tokens  # DDP averages gradients over the processes
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k, batch in enumerate(batches):
            batch = batch.to(self.device)
            no_sync = self.world.distributed and k < len(batches) - 1  # gradients are exchanged once per update
            with self.net.no_sync() if no_sync else contextlib.nullcontext():
                with self.precision.autocast():
                    loss = batch_loss(self.model, batch, cfg.label_smoothing, self.net)
                self.precision.scaler.scale(loss * scale).backward()
            loss_sum += loss.item()
        scaler, grad_norm = self.precision.scaler, None
        if cfg.clip_grad_norm or not scaler.is_enabled():  # the norm clips, and tells a diverged run
            scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm or math.inf))
        if scaler.is_enabled():
            grad_norm = None  # fp16: the scaler skips the updates whose gradients overflowed, by design
        scaler.step(self.optimizer)
        scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        seconds = time.perf_counter() - start
        # one small exchange per update: the loss, stop requests, and rank 0's clock (which decides max_minutes)
        loss_sum, stops, seconds = distributed.all_sum(
            [loss_sum, float(self.signals.received is not None), seconds if self.world.main else 0.0], self.world)
        why = divergence(loss_sum / tokens, grad_norm)  # the same figures on every process
        if why:
            raise self._diverged(why)
        p.batch_in_epoch += len(group)
        p.tokens += tokens
        p.train_seconds += seconds
        return loss_sum, tokens, seconds, stops > 0

    def _collate(self, group: list[np.ndarray]) -> list[Batch]:
        """This process's batches of the update. With subword sampling (data.spm_alpha) each is segmented
        anew, seeded by (seed, epoch, its place in the epoch): the same whatever the processes, on resume too."""
        p = self.progress
        places = distributed.share(list(range(p.batch_in_epoch, p.batch_in_epoch + len(group))), self.world)
        return [self.data.train.collate(index, (self.cfg.train.seed, p.epoch, place))
                for index, place in zip(distributed.share(group, self.world), places)]

    def _target_tokens(self, group: list[np.ndarray], batches: list[Batch]) -> int:
        """The update's target tokens over every process: the stored lengths, or the sampled batches' own."""
        if self.data.train.sampling is None:
            return sum(self.data.train.target_tokens(ids) for ids in group)
        return int(distributed.all_sum([float(sum(b.n_tgt_tokens for b in batches))], self.world)[0])


def _normalised(config: dict, source: str) -> dict:
    """A stored config as this version reads it (defaults for keys it lacks)."""
    try:
        return config_to_dict(config_from_dict(config, f"{source} (stored config)"))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def _content(section: dict) -> dict:
    """A config section without the keys that say where things are kept rather than what they are."""
    return {k: v for k, v in section.items() if k != "cache_dir"}


def train(cfg: ExperimentConfig, callbacks: list[Callback] = (), restart: bool = False,
          on_signal: Callable[[str], None] | None = None) -> EndEvent:
    """Train `cfg`; SIGINT/SIGTERM during training stop it at the next update with a final checkpoint.

    `on_signal(name)` is called as soon as such a signal arrives (to acknowledge it; the stop may wait for
    the update or validation under way). Rank 0 holds the run folder's lock throughout: a second `train`
    on the same folder is refused (FolderInUse); the lock of a killed run is taken over, with a note.
    """
    with StopSignals(on_signal) as signals, contextlib.ExitStack() as held:
        try:
            end = Trainer(cfg, list(callbacks), restart, signals, held).run()
        except BaseException:
            distributed.stop(clean=False)
            raise
        distributed.stop()
        return end
