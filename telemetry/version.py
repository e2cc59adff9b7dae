"""The package version, printed by every program's -V/--version."""

__version__ = "3.0.0"
