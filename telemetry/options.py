"""A program's options as one table, read two ways.

The programs that start often (hprobe and telem-record-gen, at every timer tick or from
scripts; the daemons, at every activation) read their usual command lines with `Options.parse`, a few
lines of Python.  Anything else (-h/--help, -V/--version, shell completion, a mistake)
goes to the click command built from the same table (`Options.decorate`), which prints
the help, the man page's text and the one-line errors.  click, whose import costs more
than the rest of a probe's run, is then loaded only when it has something to say, and
the two readers cannot drift apart: `parse` reads flags and one-value options as click's
parser does and answers None (ask click) for everything it does not read the same way
(tests/unit/test_options.py holds them equal on generated command lines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class Item:
    """One entry of the table.  `names` are the option strings `parse` reads; an entry
    without names is read by click alone."""

    names: tuple[str, ...] = ()

    @property
    def takes_value(self) -> bool:
        return False

    def start(self, values: dict[str, Any]) -> None:
        """Put the value the program gets when the option is not given."""

    def take(self, values: dict[str, Any], name: str, value: str | None) -> bool:
        """Read one occurrence (`value`: None for a flag); False leaves the whole command
        line to click, whose message then explains what is wrong."""
        raise NotImplementedError

    def decorate(self, f: Callable[..., Any]) -> Callable[..., Any]:
        """Add the click parameter(s) to the command's callback."""
        raise NotImplementedError

    def from_click(self) -> dict[str, Any]:
        """Values the program gets that click keeps outside the callback's parameters."""
        return {}


@dataclass(frozen=True)
class Option(Item):
    """A flag (True when given) or an option taking one value (the last one given wins)."""

    dest: str
    names: tuple[str, ...]
    flag: bool = False
    default: str | None = None
    metavar: str | None = None
    help: str | None = None

    @property
    def takes_value(self) -> bool:
        return not self.flag

    def start(self, values: dict[str, Any]) -> None:
        values[self.dest] = False if self.flag else self.default

    def take(self, values: dict[str, Any], name: str, value: str | None) -> bool:
        values[self.dest] = True if self.flag else value
        return True

    def decorate(self, f: Callable[..., Any]) -> Callable[..., Any]:
        import click

        extra: dict[str, Any] = {}
        if self.flag:
            extra["is_flag"] = True
        if self.default is not None:
            extra["default"] = self.default
        if self.metavar is not None:
            extra["metavar"] = self.metavar
        if self.help is not None:
            extra["help"] = self.help
        return click.option(*self.names, self.dest, **extra)(f)


def flag(dest: str, *names: str, **kw: Any) -> Option:
    return Option(dest, names, flag=True, **kw)


def value(dest: str, *names: str, **kw: Any) -> Option:
    return Option(dest, names, **kw)


@dataclass(frozen=True)
class ClickOnly(Item):
    """Parameters only click reads (-V/--version, an option for tests): when one is given,
    the whole command line goes to click.  `defaults`: the values the program gets
    otherwise."""

    decorator: Decorator
    defaults: tuple[tuple[str, Any], ...] = ()

    def start(self, values: dict[str, Any]) -> None:
        values.update(self.defaults)

    def decorate(self, f: Callable[..., Any]) -> Callable[..., Any]:
        return self.decorator(f)


class Options:
    """The table, in the order --help and the man page list it."""

    def __init__(self, *items: Item):
        self.items = items
        self._by_name: dict[str, Item] = {}
        for item in items:
            for name in item.names:
                well_formed = len(name) > 2 and name.startswith("--") or len(name) == 2 and name[0] == "-" != name[1]
                if name in self._by_name or not well_formed:
                    raise ValueError(f"option name {name!r} is repeated, or neither -x nor --name")
                self._by_name[name] = item

    def parse(self, args: Sequence[str]) -> dict[str, Any] | None:
        """The program's values for `args`, or None: click must read them (help, version,
        an error, or a form this reader does not handle, such as `--` or a positional
        argument, which none of these programs takes)."""
        values: dict[str, Any] = {}
        for entry in self.items:
            entry.start(values)
        item: Item | None
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg.startswith("--"):
                name, eq, text = arg.partition("=")
                item = self._by_name.get(name)
                if item is None or name == "--":
                    return None
                if not item.takes_value:
                    if eq or not item.take(values, name, None):
                        return None
                    continue
                if not eq:
                    if i == len(args):
                        return None
                    text = args[i]
                    i += 1
                if not item.take(values, name, text):
                    return None
            elif arg.startswith("-") and arg != "-":
                # A cluster of short options: -Hlu, -cVALUE, -Hc VALUE.
                for j in range(1, len(arg)):
                    name = "-" + arg[j]
                    item = self._by_name.get(name)
                    if item is None:
                        return None
                    if not item.takes_value:
                        if not item.take(values, name, None):
                            return None
                        continue
                    if j + 1 < len(arg):
                        text = arg[j + 1:]
                    elif i < len(args):
                        text = args[i]
                        i += 1
                    else:
                        return None
                    if not item.take(values, name, text):
                        return None
                    break
            else:
                return None
        return values

    def decorate(self, f: Callable[..., Any]) -> Callable[..., Any]:
        """`f` with every item's click parameters, listed in the table's order."""
        for item in reversed(self.items):
            f = item.decorate(f)
        return f

    def from_click(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for item in self.items:
            values.update(item.from_click())
        return values
