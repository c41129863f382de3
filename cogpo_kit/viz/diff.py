"""Word-level differences between two texts as HTML (``difflib``), and the shared CSS of the views.

Whitespace is kept (newlines of a CoT stay newlines) but a whitespace-only change is not
highlighted. Every piece of text is HTML-escaped.
"""

from __future__ import annotations

import difflib
import html
import re

_TOKEN = re.compile(r"\s+|[^\s]+")

CSS = """
.ck-view{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:13px;line-height:1.45}
.ck-cols{display:flex;gap:10px;align-items:flex-start;overflow-x:auto}
.ck-col{flex:1 1 0;min-width:260px;border:1px solid #ddd;border-radius:6px;padding:6px 8px;background:#fff}
.ck-col h4{margin:2px 0 6px 0;font-size:13px}
.ck-text{white-space:pre-wrap;word-wrap:break-word;max-height:480px;overflow-y:auto;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.ck-add{background:#c8f7c5;text-decoration:none}
.ck-del{background:#ffd0d0;text-decoration:line-through;color:#8a1f1f}
.ck-badge{display:inline-block;padding:1px 7px;margin:1px 3px 1px 0;border-radius:9px;background:#eef;font-size:12px}
.ck-good{background:#d9f5d6}.ck-bad{background:#fbd5d5}.ck-warn{background:#fff1c2}
.ck-meta{color:#555;font-size:12px;margin:4px 0}
.ck-empty{color:#777;font-style:italic}
"""


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text or "")


def _key(tok: str) -> str:
    return " " if tok.isspace() else tok


def word_diff(base: str, other: str) -> list[tuple[str, str]]:
    """``[(op, text)]`` turning ``base`` into ``other``; op is ``=``, ``+`` (only in other) or ``-`` (only in base)."""
    a, b = _tokens(base), _tokens(other)
    sm = difflib.SequenceMatcher(None, [_key(t) for t in a], [_key(t) for t in b], autojunk=False)
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out.append(("=", "".join(b[j1:j2])))
            continue
        if op in ("delete", "replace"):
            out.append(("-", "".join(a[i1:i2])))
        if op in ("insert", "replace"):
            out.append(("+", "".join(b[j1:j2])))
    return out


def diff_html(base: str, other: str, *, show_removed: bool = True) -> str:
    """``other`` as HTML: words added relative to ``base`` highlighted, words removed struck through
    (left out with ``show_removed=False``)."""
    parts = []
    for op, text in word_diff(base, other):
        esc = html.escape(text)
        if op == "-" and not show_removed:
            continue
        if op == "=" or text.isspace():
            parts.append(esc)
        elif op == "+":
            parts.append(f'<span class="ck-add">{esc}</span>')
        else:
            parts.append(f'<span class="ck-del">{esc}</span>')
    return "".join(parts)


def diff_stats(base: str, other: str) -> dict[str, int]:
    """Words added and removed going from ``base`` to ``other``."""
    added = removed = 0
    for op, text in word_diff(base, other):
        n = len(text.split())
        if op == "+":
            added += n
        elif op == "-":
            removed += n
    return {"added": added, "removed": removed}
