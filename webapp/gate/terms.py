"""The terms of use shown to visitors, with the id and hash stored on acceptance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

TERMS_DIR = Path(__file__).parents[1] / "data" / "terms"
CURRENT_TERMS_ID = "llm-jp-3-172b-beta1-tou"


@dataclass(frozen=True)
class Terms:
    """One version of the terms: its Japanese (authoritative) and English texts."""

    id: str
    ja: str
    en: str

    @property
    def sha256(self) -> str:
        """SHA-256 of the exact texts shown: Japanese, a NUL byte, then English, as UTF-8."""
        return hashlib.sha256(self.ja.encode() + b"\0" + self.en.encode()).hexdigest()

    @classmethod
    def load(cls, terms_id: str = CURRENT_TERMS_ID, directory: Path = TERMS_DIR) -> Terms:
        """Read the two texts of ``terms_id`` from ``directory``, byte for byte."""
        read = lambda lang: (directory / f"{terms_id}.{lang}.txt").read_bytes().decode("utf-8")  # noqa: E731
        return cls(id=terms_id, ja=read("ja"), en=read("en"))
