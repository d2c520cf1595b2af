"""What reaches a terminal: text from peers made harmless to show.

Usernames and message text come from strangers. Written raw, an escape sequence could move
the cursor, rewrite earlier lines, retitle the window or (on some terminals) answer back, a
newline could forge a line that looks like another peer's message, and bidirectional
overrides could make text read differently from what it is. :func:`printable` shows every
such character as a visible escape instead (counted nowhere: it is display, not policy).
"""

from __future__ import annotations

import unicodedata

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069")
LINE_SEPARATORS = frozenset("\u2028\u2029\x85")


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters (C0, C1, DEL, line separators, bidi overrides)
    replaced by visible escapes such as ``\\x1b``; cut to ``limit`` characters with ``…``."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable() and not BIDI_CONTROLS.intersection(text):
        return text  # the common case, in C
    out = []
    for ch in text:
        if (unicodedata.category(ch) == "Cc" or ch in BIDI_CONTROLS
                or ch in LINE_SEPARATORS):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
