"""Where an installation puts things, and the values unit templates are filled with.

The runtime locations (opt-in file, socket, spool, …) come from `Paths.system()` with
the install-time directories, the same object the installed programs build, so a unit
always watches and protects exactly what its program uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from telemetry.daemons.store.queue import WAKEUP_FILE, queue_dir
from telemetry.paths import SERVICE_USER, Paths
from telemetry.version import __version__


@dataclass(frozen=True)
class Layout:
    prefix: str = "/usr"
    sysconfdir: str = "/etc"
    localstatedir: str = "/var"
    rundir: str = "/run"
    # Where systemd units go; "" means PREFIX/lib/systemd/system.  Debian 12 wants
    # /lib/systemd/system (its systemd.pc's systemdsystemunitdir).
    unitdir: str = ""
    # zsh's completion functions: "" means PREFIX/share/zsh/site-functions (zsh's own
    # default); Debian's zsh searches PREFIX/share/zsh/vendor-completions.
    zshcompdir: str = ""

    def __post_init__(self) -> None:
        for name in ("prefix", "sysconfdir", "localstatedir", "rundir", "unitdir", "zshcompdir"):
            value = getattr(self, name)
            if name in ("unitdir", "zshcompdir") and not value:
                continue
            if not os.path.isabs(value) or "\n" in value or " " in value:
                raise ValueError(f"{name} must be an absolute path without spaces, not {value!r}")
            object.__setattr__(self, name, os.path.normpath(value))
        if not self.unitdir:
            object.__setattr__(self, "unitdir", os.path.join(self.prefix, "lib/systemd/system"))
        if not self.zshcompdir:
            object.__setattr__(self, "zshcompdir", os.path.join(self.prefix, "share/zsh/site-functions"))

    @property
    def paths(self) -> Paths:
        return Paths.system(self.prefix, self.sysconfdir, self.localstatedir, self.rundir)

    @property
    def bindir(self) -> str:
        return os.path.join(self.prefix, "bin")

    @property
    def libdir(self) -> str:
        return os.path.join(self.prefix, "lib")

    @property
    def mandir(self) -> str:
        return os.path.join(self.prefix, "share/man")

    @property
    def bashcompdir(self) -> str:
        return os.path.join(self.prefix, "share/bash-completion/completions")

    @property
    def fishcompdir(self) -> str:
        return os.path.join(self.prefix, "share/fish/vendor_completions.d")

    def manifest(self, distribution: str) -> str:
        """The list of files `install` wrote for a distribution, which `uninstall` reads."""
        return os.path.join(self.prefix, "share", distribution, "installed-files")

    def placeholders(self) -> dict[str, str]:
        """@NAME@ → value for every placeholder a template may use."""
        p = self.paths
        return {
            "PREFIX": self.prefix,
            "BINDIR": self.bindir,
            "SYSCONFDIR": self.sysconfdir,
            "LOCALSTATEDIR": self.localstatedir,
            "RUNDIR": self.rundir,
            "CONFDIR": p.config_dir,
            "CONFIG_FILE": p.config_file,
            "DEFAULTS_FILE": p.defaults_file,
            "OPTIN_FILE": p.opt_in_file,
            "SOCKET_PATH": p.socket_path,
            "SPOOLDIR": p.spool_dir,
            "QUEUEDIR": queue_dir(p.spool_dir),
            "WAKEUP_FILE": os.path.join(queue_dir(p.spool_dir), WAKEUP_FILE),
            "STATEDIR": p.state_dir,
            "LOGDIR": p.journal_dir,
            "CACHEDIR": p.cache_dir,
            "PSTORE_CACHEDIR": p.pstore_cache_dir,
            "TMPFILES_CONF": p.tmpfiles_conf,
            "SERVICE_USER": SERVICE_USER,
            "VERSION": __version__,
            **self._core_pattern(),
        }

    def _core_pattern(self) -> dict[str, str]:
        """kernel.core_pattern as crashprobe asks for it, when crashprobe exists."""
        try:
            from telemetry.probes.crash.args import core_pattern
        except ImportError:
            return {}
        return {"CORE_PATTERN": core_pattern(self.bindir)}


def under(destdir: str, path: str) -> str:
    """`path` inside the staging root DESTDIR (itself when DESTDIR is empty)."""
    return os.path.join(destdir, path.lstrip("/")) if destdir else path
