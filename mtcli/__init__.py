"""mtcli: a command-line tool for machine-translation experiments."""

__version__ = "0.1.0"
