"""Errors a user can cause. The CLI prints them as one line and exits with code 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class MtcliError(Exception):
    """A mistake in the user's input (config, data, checkpoint): printed as one line."""


class ConfigError(MtcliError):
    """A bad experiment config or override."""


class DataError(MtcliError):
    """Unreadable or inconsistent corpus files."""


class CheckpointError(MtcliError):
    """A missing, damaged or unsafe checkpoint."""


class TrainingError(MtcliError):
    """Training cannot go on (a diverged loss); the last good checkpoint is kept."""


class WriteError(MtcliError):
    """A file or folder could not be written (full disk, read-only, missing folder, permission); what was
    there before is intact."""

    def __init__(self, path: Path | str, cause: str):
        super().__init__(f"{path}: cannot write ({cause})")
        self.path, self.cause = Path(path), cause


class FolderInUse(MtcliError):
    """Another live process holds the folder's lock (mtcli.files.folder_lock)."""

    def __init__(self, folder: Path, holder: dict[str, Any], message: str):
        super().__init__(message)
        self.folder, self.holder = folder, holder


class ReportedElsewhere(MtcliError):
    """Under torchrun: rank 0 has said what went wrong; this process only stops, with exit code 1."""
