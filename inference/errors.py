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

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other arguments; rebuild from the two messages so the
        # error survives pickling (ZeroGPU sends it between processes).
        return _restore, (type(self), self.ja, self.en, dict(self.__dict__))


def _restore(cls: type[AppError], ja: str, en: str, state: dict[str, object]) -> AppError:
    error = cls.__new__(cls)
    AppError.__init__(error, ja, en)
    error.__dict__.update(state)
    return error


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


class Busy(AppError):
    """Too many requests are already waiting for this model; nothing was queued."""

    def __init__(self, waiting: int) -> None:
        super().__init__(
            f"ただいま混み合っています(順番待ち {waiting} 件で上限です)。しばらくしてからもう一度お試しください。",
            f"The model is busy ({waiting} requests are already waiting, the most allowed). Please try again shortly.",
        )
        self.waiting = waiting
