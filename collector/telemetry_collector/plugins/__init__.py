"""Plugins shipped with the collector, registered through the same entry points a third
party's would be (see ``collector/pyproject.toml``): `mce`, the machine-check view."""
