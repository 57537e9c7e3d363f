"""The chat tab's handlers: the ways into a reply, undo and new chat, the model's controls, feedback, export.

The conversation lives in the chatbot (``messages`` says what its
messages mean); replies stream through ``reply``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import feedback
from inference import AppError
from webapp.chat import reply as chat_reply
from webapp.chat.export import export_links
from webapp.chat.messages import Messages, last_user, plain, reply_id, text_of, through_reply, to_history
from webapp.chat.models_info import chat_defaults
from webapp.errors import ConsentRequired
from webapp.gate.identity import Caller
from webapp.handlers import Handlers, licence_markdown
from webapp.i18n import say

log = logging.getLogger(__name__)


class NotSentHere(AppError):
    """A rating whose conversation is not the one this server sent to this caller; nothing is stored."""

    def __init__(self) -> None:
        super().__init__(
            "この会話はこのサーバーが送ったものと一致しないため、評価できません。ページを再読み込みしてください。",
            "This conversation does not match what the server sent, so it cannot be rated. Reload the page.",
        )


class RatingNotStored(AppError):
    """The database refused the write (a full disk, a lost connection); nothing is stored."""

    def __init__(self) -> None:
        super().__init__(
            "評価を保存できませんでした。しばらくしてからもう一度お試しください。",
            "The rating could not be stored. Please try again later.",
        )


@contextlib.contextmanager
def _storing() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        log.warning("rating not stored: %s", type(exc).__name__)
        raise RatingNotStored() from None


class ChatPage:
    """The chat tab's handlers. Outputs of the reply handlers: chatbot, message box, records."""

    def __init__(self, handlers: Handlers, sessions: sessionmaker[Session]) -> None:
        self.handlers = handlers
        self.sessions = sessions
        self.registry = handlers.inference.registry
        self.streams = chat_reply.ReplyStreams(handlers)
        # The five ways into a reply differ only in what they answer; their inputs are the same.
        self.send = self.streams.entry(chat_reply.typed)
        self.retry = self.streams.entry(chat_reply.again, gr.RetryData)
        self.edit = self.streams.entry(chat_reply.edited, gr.EditData)
        self.option = self.streams.entry(chat_reply.continued, gr.SelectData)
        self.example = self.streams.entry(chat_reply.example, gr.SelectData)
        self.stop = self.streams.stop

    def undo(self, messages: Messages, request: gr.Request) -> tuple[Any, Any]:
        """Take back the last message: it returns to the box, its reply is dropped."""
        u = last_user(messages or [])
        if u is None or self.streams.running(request):
            return gr.skip(), gr.skip()
        return plain(messages[:u]), text_of(messages[u]["content"])

    def new_chat(self, request: gr.Request) -> tuple[Any, ...]:
        """An empty conversation; consent and settings stay."""
        self.streams.cancel(request)
        return [], "", {}, None

    # -- model choice ------------------------------------------------------------

    def model_changed(self, model_id: str, lang: str | None) -> tuple[Any, ...]:
        """Reset the controls to the chosen model's chat defaults; its card's own length shows beside."""
        s = chat_defaults(self.registry.get(model_id))
        return (
            s.temperature,
            s.top_p,
            s.top_k,
            s.repetition_penalty,
            s.max_new_tokens,
            *self.model_texts(model_id, lang),
        )

    def model_texts(self, model_id: str, lang: str | None) -> tuple[str, str]:
        """The card's own max_new_tokens and the licence line, in the page's language."""
        spec = self.registry.get(model_id)
        card = f"{say(lang, 'card_value')}: max_new_tokens = {spec.sampling.max_new_tokens}"
        # A model that cannot load here says why, under its licence.
        unavailable = self.handlers.availability.note(spec, lang) if self.handlers.availability else ""
        return card, "\n\n".join(filter(None, [licence_markdown(spec, lang or "ja"), unavailable]))

    # -- feedback ----------------------------------------------------------------

    def rate(
        self,
        messages: Messages,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        data: gr.LikeData,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:
        """A like or dislike on a reply is stored at once; the comment box opens for an optional comment.

        Only a reply this server made for this caller, in the conversation it
        was sent in, and only with consent given now.
        """
        caller = self.handlers.caller(request, profile, receipt)
        # Every rating adds a row: counted against the caller's chat rate, so clicking (or calling
        # the queue) in a loop cannot fill the table.
        self.handlers.limits.check("chat", caller)
        index = data.index if data is not None and isinstance(data.index, int) else -1
        rid = reply_id(messages or [], index)
        record = (replies or {}).get(rid) if rid else None
        if rid is None or record is None or data.liked not in (True, False):
            gr.Info(say(lang, "feedback_none"), title=say(lang, "notice_title"))
            return gr.skip(), gr.skip(), gr.skip()
        self._check(caller, rid, record, through_reply(messages or [], rid))
        rating = feedback.Rating.UP if data.liked is True else feedback.Rating.DOWN
        with _storing(), self.sessions.begin() as session:
            row = feedback.record(
                session,
                rating=rating,
                model_id=record["model_id"],
                revision=record.get("revision"),
                sampling=record["sampling"],
            )
            row_id = row.id
        marker = say(lang, "rated_up" if rating is feedback.Rating.UP else "rated_down")
        pending = {"id": row_id, "index": index, "rid": rid}
        return pending, gr.Group(visible=True), f"{marker} {record['model_label']}"

    def annotate(
        self,
        pending: dict[str, Any] | None,
        comment: str,
        share: bool,
        messages: Messages,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:
        """Add the optional comment (and, if allowed, the conversation up to the reply) to the stored rating."""
        record = (replies or {}).get(pending["rid"]) if pending else None
        if not pending or record is None:
            gr.Info(say(lang, "feedback_none"), title=say(lang, "notice_title"))
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        upto = through_reply(messages or [], pending["rid"])
        self._check(self.handlers.caller(request, profile, receipt), pending["rid"], record, upto)
        shared = to_history(upto) if share is True else None
        with _storing(), self.sessions.begin() as session:
            feedback.annotate(session, pending["id"], comment=comment or "", conversation=shared)
        gr.Info(say(lang, "feedback_thanks"), title=say(lang, "notice_title"))
        return None, gr.Group(visible=False), "", False

    def _check(self, caller: Caller, rid: str, record: dict[str, Any], upto: Messages) -> None:
        """Consent now, and the conversation up to the reply exactly as the server sent it to this caller."""
        if not self.handlers.gate.has_consent(caller):
            raise ConsentRequired()
        signed = self.handlers.gate.identities.sign_reply(rid, caller.identity, to_history(upto))
        if not hmac.compare_digest(str(record.get("_signed", "")), signed):
            raise NotSentHere()

    # -- export --------------------------------------------------------------------

    def export(
        self, messages: Messages, replies: dict[str, Any], lang: str | None, versions: dict[str, Any] | None = None
    ) -> str:
        """The conversation as JSON and Markdown downloads, carried in the page itself: the versions shown,
        with a note of the others."""
        return export_links(messages or [], replies or {}, self.handlers.gate.terms, lang, versions or {})
