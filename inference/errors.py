"""The one error hierarchy whose messages reach visitors.

Every message is bilingual, Japanese first, and says what to do next. The web
layer turns these into ``gr.Error`` in one place (``webapp.errors``).
"""

from __future__ import annotations


class AppError(Exception):
    """An error a visitor should read, in Japanese and English."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(f"{ja} / {en}")
        self.ja = ja
        self.en = en


class InvalidInput(AppError):
    """The request itself is wrong; nothing was done."""


class UnknownModel(InvalidInput):
    """A model id that the registry does not hold."""

    def __init__(self, model_id: str, known: list[str]) -> None:
        names = ", ".join(known)
        super().__init__(
            f"モデル「{model_id}」はありません。次から選んでください: {names}",
            f"There is no model '{model_id}'. Choose one of: {names}",
        )
        self.model_id = model_id


class ModelUnavailable(AppError):
    """The model exists in the registry but cannot be loaded here."""


class OutOfMemory(AppError):
    """The device ran out of memory; what could be freed was freed."""

    def __init__(self) -> None:
        super().__init__(
            "メモリが不足しました。max_new_tokens を減らすか、より小さいモデルを選んでください。",
            "Out of memory. Lower max_new_tokens or choose a smaller model.",
        )


class GenerationFailed(AppError):
    """Generation stopped with an unexpected error."""
