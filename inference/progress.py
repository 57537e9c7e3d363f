"""What a request is waiting for before its first token, for the visitor to see."""

from __future__ import annotations

from dataclasses import dataclass

GB = 1000**3


@dataclass(frozen=True)
class Queued:
    """Waiting behind other requests to the same model server."""

    position: int
    """1 for the next request to run."""

    def describe(self) -> str:
        return f"順番待ち: {self.position} 番目です。 / In the queue: position {self.position}."


@dataclass(frozen=True)
class _Bytes:
    done: int
    total: int

    @property
    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total else None


@dataclass(frozen=True)
class Downloading(_Bytes):
    """Fetching a checkpoint's files from the hub."""

    def describe(self) -> str:
        sizes = f"{self.done / GB:.1f} / {self.total / GB:.1f} GB"
        return f"モデルをダウンロードしています({sizes})。 / Downloading the model ({sizes})."


@dataclass(frozen=True)
class Loading(_Bytes):
    """Reading weights into device memory."""

    def describe(self) -> str:
        share = f"{self.fraction:.0%}" if self.fraction is not None else "…"
        return f"モデルを読み込んでいます({share})。 / Loading the model ({share})."


Status = Queued | Downloading | Loading
