"""Checks on text that strangers send: it must encode, and a required field must show something."""

from __future__ import annotations

import unicodedata

from inference.errors import InvalidInput

# Characters that render as nothing: controls, format characters (zero-width
# spaces, joiners, the BOM, bidi controls), separators, lone combining marks,
# private-use, unassigned and surrogate code points.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me", "Co", "Cn", "Cs"})
# Letters and symbols that are blank glyphs, favoured for faking an empty name.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Explicit bidi embeddings, overrides and isolates: they reorder what an
# administrator reads (a name that displays as something else).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def encodable(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (no lone surrogates), so it can be stored and tokenised."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def visible(value: str) -> bool:
    """Whether ``value`` shows at least one character once invisible ones are taken away."""
    return any(unicodedata.category(c) not in _INVISIBLE_CATEGORIES and c not in _BLANK_GLYPHS for c in value)


def require_encodable(value: str, what_ja: str, what_en: str) -> str:
    """``value``, or a bilingual ``InvalidInput`` when it holds code points that are not text."""
    if not encodable(value):
        raise InvalidInput(
            f"{what_ja}に文字として扱えない符号(孤立したサロゲートなど)が含まれています。",
            f"The {what_en} contains code points that are not valid text (such as lone surrogates).",
        )
    return value
