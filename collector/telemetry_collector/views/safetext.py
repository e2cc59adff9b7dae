"""Untrusted text (payloads, every field a sender chose) as inert, visible HTML (pure).

Anyone may send a record, so a payload can hold markup, terminal escape sequences,
bidirectional overrides or invisible characters meant to make a page lie.  Here every
character is escaped, and each one that would not show as itself is shown by name
instead, marked so the page can style it: control characters as ``\\x1b`` (tab and line
feed are kept), Unicode format characters (bidi overrides, zero-width ones) and
separators as ``\\u202e``, surrogates and private-use code points likewise.
"""

from __future__ import annotations

import re
import unicodedata

from markupsafe import Markup, escape

KEPT = frozenset("\n\t")
SHOWN_BY_NAME = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def code(ch: str) -> str:
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def hidden(ch: str) -> bool:
    return ch not in KEPT and unicodedata.category(ch) in SHOWN_BY_NAME


# Characters that may be hidden: every one outside printable ASCII but tab and line feed.
_CANDIDATE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\U0010ffff]")


def _show(m: re.Match[str]) -> str:
    ch = m.group(0)
    return f'<span class="ctl" title="U+{ord(ch):04X}">{code(ch)}</span>' if hidden(ch) else ch


def visible(text: str) -> Markup:
    """`text` escaped, with each hidden character as ``<span class="ctl">\\x1b</span>``."""
    return Markup(_CANDIDATE.sub(_show, str(escape(text))))
