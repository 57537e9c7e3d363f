"""What a request is waiting for before its first token, for the visitor to see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GB = 1000**3


class _Described:
    """A status the visitor reads: ``texts`` in Japanese and English, ``describe`` both (as the API gives them)."""

    def texts(self) -> tuple[str, str]:
        raise NotImplementedError

    def describe(self) -> str:
        return " / ".join(self.texts())


@dataclass(frozen=True)
class Queued(_Described):
    """Waiting behind other requests to the same model server."""

    position: int
    """1 for the next request to run."""

    def texts(self) -> tuple[str, str]:
        return f"順番待ち: {self.position} 番目です。", f"In the queue: position {self.position}."


@dataclass(frozen=True)
class _Bytes(_Described):
    done: int
    total: int

    @property
    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total else None


@dataclass(frozen=True)
class Downloading(_Bytes):
    """Fetching a checkpoint's files from the hub."""

    def texts(self) -> tuple[str, str]:
        sizes = f"{self.done / GB:.1f} / {self.total / GB:.1f} GB"
        return f"モデルをダウンロードしています({sizes})", f"Downloading the model ({sizes})"


@dataclass(frozen=True)
class Loading(_Bytes):
    """Reading weights into device memory."""

    def texts(self) -> tuple[str, str]:
        share = f"{self.fraction:.0%}" if self.fraction is not None else "…"
        return f"モデルを読み込んでいます({share})", f"Loading the model ({share})"


@dataclass(frozen=True)
class WaitingForMemory(_Described):
    """Admitted, but the model's memory for replies (its KV cache) is full: it starts when others end."""

    position: int

    def texts(self) -> tuple[str, str]:
        return (
            f"メモリの空きを待っています({self.position} 番目)。ほかの返答が終わると始まります。",
            f"Waiting for memory (position {self.position}): it starts when other replies end.",
        )


@dataclass(frozen=True)
class Starting(_Described):
    """The model's engine process (vLLM) is starting: loading weights, warming up."""

    engine: str
    seconds: float
    """Since the start began."""

    def texts(self) -> tuple[str, str]:
        s = f"{self.seconds:.0f}"
        return f"推論エンジン({self.engine})を起動しています({s} 秒)", f"Starting the {self.engine} engine ({s} s)"


@dataclass(frozen=True)
class Trimmed(_Described):
    """The conversation outgrew the model's context: its oldest turns are left out of the prompt."""

    dropped_turns: int

    def texts(self) -> tuple[str, str]:
        n = self.dropped_turns
        return (
            f"会話がモデルの文脈長を超えたため、古い発言 {n} 件を省いて返答しました。",
            f"The conversation outgrew the model's context: the oldest {n} turns were left out of this reply.",
        )


FinishReason = Literal["stop", "length", "cancelled", "shared"]
"""``shared``: ended early so that visitors waiting for the model could be served (continue goes on)."""


@dataclass(frozen=True)
class Finished:
    """Yielded last on every normal end of a reply: what was generated, by which weights."""

    model_id: str
    revision: str | None
    """The checkpoint's commit on the hub (or the pinned revision), when known."""
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    """From the request to its end, waiting included."""
    finish_reason: FinishReason
    """``stop``: the model ended its reply; ``length``: max_new_tokens or the context; ``cancelled``: stopped."""
    dropped_turns: int
    prompt_text: str | None = None
    """The exact text the model was given (its chat template written out, special tokens included)."""

    def describe(self) -> str:
        rate = f", {self.completion_tokens / self.seconds:.1f} tok/s" if self.seconds > 0 else ""
        rev = f" @ {self.revision[:12]}" if self.revision else ""
        return (
            f"{self.model_id}{rev}: {self.completion_tokens} トークン / tokens, {self.seconds:.1f} s{rate}"
            f" ({self.finish_reason})"
        )


@dataclass(frozen=True)
class Outcome:
    """What a backend reports when a reply has ended; the engine adds the timing and the model."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    revision: str | None = None
    dropped_turns: int = 0


Status = Queued | Downloading | Loading | Starting | WaitingForMemory | Trimmed | Finished
