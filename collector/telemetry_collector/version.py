"""The collector's version, printed by `telemetry-collector --version`."""

__version__ = "3.0.0"
