"""Errors a user can cause. The CLI prints them as one line and exits with code 1."""


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
