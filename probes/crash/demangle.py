"""Readable names for C++ and Rust symbols, as gdb prints them.

C++ (Itanium `_Z…`) goes through the C++ runtime's own demangler, `__cxa_demangle` of
libstdc++, which is the GNU demangler gdb uses, so the names read exactly as in gdb.
Rust symbols go through rust-demangler: the v0 scheme (`_R…`) and the legacy one
(`_ZN…17h<hash>E`, from which the hash is dropped, as gdb drops it).  A name that is
not mangled, or that a demangler refuses, is returned unchanged; nothing here raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re

MANGLED_MAX = 4096  # longer names are shown as they are
_RUST_LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")
_HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}$")


def demangle(name: str) -> str:
    """The readable form of `name` (itself when it is not mangled or cannot be read)."""
    if len(name) > MANGLED_MAX or not name.startswith(("_Z", "_R", "__Z")):
        return name
    try:
        if name.startswith("_R") or (name.startswith("_ZN") and _RUST_LEGACY_HASH.search(name)):
            return _rust(name) or name
        return _cxx(name) or name
    except Exception:  # a demangler that chokes on a crafted name costs the name, nothing else
        return name


def _rust(name: str) -> str | None:
    try:
        import rust_demangler
    except ImportError:
        return None
    out = rust_demangler.demangle(name)
    return _HASH_SUFFIX.sub("", out) if out and out != name else None


@functools.cache
def _cxa():
    path = ctypes.util.find_library("stdc++") or "libstdc++.so.6"
    try:
        lib = ctypes.CDLL(path)
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    fn = lib.__cxa_demangle
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    free = libc.free
    free.argtypes = [ctypes.c_void_p]
    return fn, free


def _cxx(name: str) -> str | None:
    got = _cxa()
    if got is None:
        return None
    fn, free = got
    status = ctypes.c_int(0)
    out = fn(name.encode("utf-8", "surrogateescape"), None, None, ctypes.byref(status))
    if not out:
        return None
    try:
        return ctypes.string_at(out).decode("utf-8", "replace") if status.value == 0 else None
    finally:
        free(out)


def preload() -> None:
    """Load the demanglers before privileges are dropped."""
    _cxa()
    try:
        import rust_demangler  # noqa: F401
    except ImportError:
        pass
