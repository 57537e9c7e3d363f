"""What a request is waiting for before its first token, for the visitor to see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


@dataclass(frozen=True)
class Trimmed:
    """The oldest turns did not fit the model's context and were left out of the prompt."""

    dropped_turns: int

    def describe(self) -> str:
        return (
            f"会話が長いため、古い {self.dropped_turns} 件の発言を省きました。"
            f" / The conversation is long: the oldest {self.dropped_turns} turns were left out."
        )


@dataclass(frozen=True)
class Finished:
    """How a reply ended; yielded last on every normal end of a stream."""

    model_id: str
    revision: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: Literal["stop", "length", "cancelled"]
    dropped_turns: int

    def describe(self) -> str:
        return (
            f"{self.model_id}: {self.completion_tokens} トークン、{self.seconds:.1f} 秒。"
            f" / {self.model_id}: {self.completion_tokens} tokens in {self.seconds:.1f} s."
        )


Status = Queued | Downloading | Loading | Trimmed | Finished
