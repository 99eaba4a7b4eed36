"""mtcli: a command-line tool for machine-translation experiments, and its Python API (`mtcli.load`).

Importing mtcli imports nothing heavy: the API loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from mtcli.api import Model

__version__ = "0.1.0"
__all__ = ["load"]


def load(path: str | Path | list[str | Path], device: str = "cpu") -> Model:
    """Load a run folder or checkpoint (a list of them: one ensemble) for translating and scoring:

        model = mtcli.load("runs/toy-attention")
        model.translate(["the dog sleeps"], beam=5, n_best=2)[0].hypotheses
    """
    from mtcli.api import load as load_model

    return load_model(path, device)
