"""Where and how training runs: the device, the numeric precision, and stopping on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from mtcli.distributed import World
from mtcli.errors import ConfigError


def resolve_device(name: str, world: World = World()) -> torch.device:
    """auto | cpu | cuda | cuda:N; under torchrun, auto and cuda mean the process's own GPU (LOCAL_RANK)."""
    cuda = torch.cuda.is_available()
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not cuda:
        raise ConfigError(f"train.device: {name!r} asked for, but no CUDA device is available (use cpu or auto)")
    index = world.local_rank if name == "cuda" else int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPUs on which bf16 matrix products are native, not emulated."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32 | bf16 | fp16 for this device; `auto` picks bf16 where the hardware does it natively."""
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return name
    if name == "fp16":
        raise ConfigError("train.precision: fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    if name == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return name


ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")
TRAINING_ONEDNN_CACHE = 32


def release_freed_heap() -> None:
    """Hand the heap that Python freed back to the system (glibc's malloc_trim; elsewhere nothing).

    Preparing a corpus makes and drops millions of small objects and glibc keeps the freed pages: at 10M
    pairs a cold start trained with 126-190 MiB more private memory than a cache hit, with this call about
    the same (docs/data.md, "Figures at scale").
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def limit_onednn_cache(capacity: int = TRAINING_ONEDNN_CACHE) -> None:
    """Keep at most `capacity` oneDNN primitives cached (default 1024), unless the user chose a size.

    bf16 matrix products on a CPU go through oneDNN, which caches one compiled primitive per shape.
    Training batches have a new token count almost every update, so their primitives are seldom reused
    but kept, up to ~0.4 GB for the bench Transformer; a small cache holds the shapes one update
    repeats (layer after layer, step after step of an RNN) at the same speed. Decoding reuses shapes
    batch after batch and wants the large default, so this is for training processes only. It takes
    effect only before the process's first oneDNN primitive, which is why training sets it at start.
    """
    if not any(name in os.environ for name in ONEDNN_CACHE_VARIABLES):
        os.environ[ONEDNN_CACHE_VARIABLES[0]] = str(capacity)


class Precision:
    """Autocast for the forward pass and, for fp16, a gradient scaler; fp32 is plain."""

    DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.DTYPES[self.name])


class StopSignals:
    """SIGINT and SIGTERM ask training to stop at the next update boundary instead of killing it.

    The loop polls `received`; it then writes a final checkpoint and returns. `acknowledge(name)` is called
    at once from the handler (keep it to a plain write), so a user knows the stop is coming even while a
    long validation finishes. Repeated signals are
    ignored (torchrun forwards a Ctrl-C its workers already got), so the final save is never cut short;
    SIGKILL still ends the process at once, losing only what was trained since the last checkpoint.
    Handlers are installed only from the main thread (Python's rule) and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, acknowledge: Callable[[str], None] | None = None) -> None:
        self.acknowledge = acknowledge
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            if self.acknowledge is not None:
                self.acknowledge(signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
