"""Errors of the web layer, and the one place they become ``gr.Error``."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import gradio as gr

from inference.errors import AppError, InvalidInput

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class ConsentRequired(AppError):
    """The caller has no recorded acceptance of the current terms."""

    def __init__(self, *, api: bool = False) -> None:
        # An API caller has no tabs: name the endpoint instead.
        if api:
            super().__init__(
                "生成する前に /accept_terms で現在の利用規約に同意してください。",
                "Accept the current terms of use with /accept_terms before generating.",
            )
        else:
            super().__init__(
                "チャットを使うには、まず「利用規約」タブで現在の利用規約に同意してください。",
                "Accept the current terms of use on the Terms tab before chatting.",
            )


class LicenceNotAcknowledged(AppError):
    """The model's licence needs an acknowledgement this caller has not given."""

    def __init__(self, model_label: str, licence: str, *, api: bool = False) -> None:
        self.model_label, self.licence = model_label, licence
        where_ja, where_en = (
            ("/acknowledge_licence", "with /acknowledge_licence") if api else ("モデル欄の下", "below the model")
        )
        super().__init__(
            f"{model_label} のライセンス({licence})は非営利利用に限られます。{where_ja}で非営利利用を確認してから使ってください。",
            f"{model_label} is licensed {licence} (non-commercial only). Acknowledge non-commercial use {where_en} first.",
        )


class NotAdmin(AppError):
    """Only administrators may do this."""

    def __init__(self) -> None:
        super().__init__("管理者のみが利用できます。", "Only administrators may do this.")


class AuditUnavailable(AppError):
    """The audit database cannot be read or written just now; nothing was recorded, the chat stays locked."""

    def __init__(self, *, withdrawal: bool = False) -> None:
        if withdrawal:
            super().__init__(
                "撤回を記録できませんでした。このサーバーではチャットをロックしました。"
                "しばらくしてからもう一度撤回してください。",
                "Your withdrawal could not be recorded. The chat is locked on this server;"
                " please withdraw again later so that it is recorded.",
            )
        else:
            super().__init__(
                "記録できませんでした。しばらくしてからもう一度お試しください(それまでチャットはロックされます)。",
                "Could not record this. Please try again later (the chat stays locked until then).",
            )


class InvalidForm(InvalidInput):
    """The acceptance form is incomplete or malformed; nothing was recorded."""

    def __init__(self, ja: str, en: str, *, fields: list[str] | None = None) -> None:
        super().__init__(ja, en)
        self.fields = fields or []
        """The form fields that need attention, by name."""


def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, AppError):
        # Expected: a refusal or bad input. One line, naming the kind only (the
        # message may quote what the visitor typed), and no traceback.
        log.info("refused: %s", type(exc).__name__)
        return gr.Error(str(exc), title="エラー / Error", print_exception=False)
    # Anything else is a bug: log it in full, show the visitor no internals.
    log.exception("unexpected error in a handler")
    return gr.Error(
        "予期しないエラーが発生しました。しばらくしてからもう一度お試しください。"
        " / Unexpected error. Please try again later.",
        title="エラー / Error",
    )


def user_errors(fn: F) -> F:
    """Turn the project's errors into messages the visitor reads; keeps ``fn``'s signature."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as exc:
                raise _to_gr_error(exc) from exc

        return agen  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _to_gr_error(exc) from exc

    return call  # type: ignore[return-value]
