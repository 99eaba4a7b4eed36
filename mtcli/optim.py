"""Training's updates: the optimizer and the learning-rate schedule, each chosen by name from a dict, the
parameter groups of weight decay, and the moving average of the weights (EMA).

Knows nothing of data, of the training loop or of the terminal. Adding an optimizer or a schedule is one
function here plus one entry in OPTIMIZERS or SCHEDULES; the config accepts every name these dicts hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

if TYPE_CHECKING:
    from mtcli.config import TrainConfig

# ---------------------------------------------------------------- optimizers

Groups = list[dict]  # torch's parameter groups: {"params": [...], "weight_decay": ...}


def adam(groups: Groups, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """Adam; weight decay, if any, is the L2 penalty added to the gradient."""
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def adamw(groups: Groups, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Loshchilov and Hutter)."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def sgd(groups: Groups, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """Stochastic gradient descent, with momentum (and Nesterov's variant) when asked."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)


OPTIMIZERS: dict[str, Callable[[Groups, TrainConfig, bool], torch.optim.Optimizer]] = {
    "adam": adam, "adamw": adamw, "sgd": sgd}

# Modules whose every parameter is exempt from weight decay, as nanoGPT's configure_optimizers and fairseq
# exempt them: shrinking a norm's gain or an embedding row towards zero is not the regularization meant.
NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> Groups:
    """Every parameter once: weight decay on the weight matrices; none on norms, biases (any parameter of
    fewer than two dimensions) and embeddings, a tied output layer included (it is the target embedding),
    unless `decay_all`. One group when every parameter gets the same decay."""
    exempt = {id(p) for module in model.modules() for p in module.parameters(recurse=False)
              if isinstance(module, NO_DECAY_MODULES) or p.ndim < 2}
    params = list(model.parameters())  # a tied parameter is listed once
    if decay_all or not weight_decay or not exempt:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """train.optimizer over the model's parameter groups. `fused`: one kernel per parameter instead of
    ~10 ops (the bench Transformer's Adam step: ~6 instead of 15-21 ms)."""
    return OPTIMIZERS[cfg.optimizer](parameter_groups(model, cfg.weight_decay, cfg.decay_all), cfg, fused)


# ---------------------------------------------------------------- learning-rate schedules


@dataclass
class Schedule:
    """The learning rate of update `step` (from 1): the shape train.scheduler names, times the cuts made
    on validation plateaus so far (scheduler plateau), and never below train.min_lr after the warmup."""

    train: TrainConfig
    total_steps: int = 0  # the run's last update, where cosine reaches min_lr (0: unknown)
    model_dim: int = 0  # noam's d_model
    scale: float = 1.0  # plateau cuts so far
    bad: int = 0  # validations without improvement since the last cut

    @property
    def warmup(self) -> int:
        return max(self.train.warmup_steps, 1)

    def lr(self, step: int) -> float:
        floor = self.train.min_lr if step >= self.warmup else 0.0
        return max(SCHEDULES[self.train.scheduler](self, step) * self.scale, floor)

    def validated(self, improved: bool) -> None:
        if self.train.scheduler != "plateau":
            return
        self.bad = 0 if improved else self.bad + 1
        if self.bad > self.train.plateau_patience:
            self.scale *= self.train.plateau_factor
            self.bad = 0

    def state(self) -> dict:
        return {"scale": self.scale, "bad": self.bad}

    def load(self, state: dict) -> None:
        self.scale, self.bad = state["scale"], state["bad"]


def constant(s: Schedule, step: int) -> float:
    """Linear warmup to train.lr, then constant."""
    return s.train.lr * min(1.0, step / s.warmup)


def inverse_sqrt(s: Schedule, step: int) -> float:
    """Linear warmup to train.lr, then lr * sqrt(warmup / step)."""
    factor = math.sqrt(s.warmup / step) if step > s.warmup else min(1.0, step / s.warmup)
    return s.train.lr * factor


def noam(s: Schedule, step: int) -> float:
    """Vaswani et al.: lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5); train.lr is the factor."""
    shape = step * s.warmup ** -1.5 if step <= s.warmup else step ** -0.5
    return s.train.lr * s.model_dim ** -0.5 * shape


def cosine(s: Schedule, step: int) -> float:
    """Linear warmup to train.lr, then half a cosine down to train.min_lr at train.decay_steps (0: at the
    run's last update), min_lr after it."""
    if step <= s.warmup:
        return s.train.lr * step / s.warmup
    end = s.train.decay_steps or s.total_steps
    progress = min(1.0, (step - s.warmup) / max(end - s.warmup, 1))
    return s.train.min_lr + (s.train.lr - s.train.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[Schedule, int], float]] = {
    "constant": constant, "inverse_sqrt": inverse_sqrt, "noam": noam, "cosine": cosine,
    "plateau": constant,  # constant, cut by Schedule.validated
}


# ---------------------------------------------------------------- moving average of the weights


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """The EMA copy of `model` (None when decay is 0): it starts from the model's weights and each
    `update_parameters(model)` moves it to decay * average + (1 - decay) * weights."""
    if not decay:
        return None
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    average.update_parameters(model)  # the first update copies: the average starts at the initial weights
    return average
