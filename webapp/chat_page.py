"""The chat tab's handlers: the ways into a reply, undo and new chat, the model's controls, feedback, export.

The conversation lives in the chatbot (``chat_messages`` says what its
messages mean); replies stream through ``chat_reply``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from sqlalchemy.orm import Session, sessionmaker

from db import feedback
from webapp import chat_reply
from webapp.chat_export import export_links
from webapp.chat_messages import Messages, last_user, plain, reply_id, text_of, to_history
from webapp.handlers import Handlers, licence_markdown
from webapp.i18n import say
from webapp.models_info import chat_defaults


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
        self, messages: Messages, replies: dict[str, Any], lang: str, data: gr.LikeData, request: gr.Request
    ) -> tuple[Any, ...]:
        """A like or dislike on a reply is stored at once; the comment box opens for an optional comment."""
        # Every rating adds a row: counted against the caller's chat rate, so clicking (or calling
        # the queue) in a loop cannot fill the table.
        self.handlers.limits.check("chat", self.handlers.caller(request, None, None))
        index = data.index if data is not None and isinstance(data.index, int) else -1
        rid = reply_id(messages or [], index)
        record = (replies or {}).get(rid) if rid else None
        if record is None or data.liked not in (True, False):
            gr.Info(say(lang, "feedback_none"), title=say(lang, "notice_title"))
            return gr.skip(), gr.skip(), gr.skip()
        rating = feedback.Rating.UP if data.liked is True else feedback.Rating.DOWN
        with self.sessions.begin() as session:
            row = feedback.record(
                session,
                rating=rating,
                model_id=record["model_id"],
                revision=record.get("revision"),
                sampling=record["sampling"],
            )
            row_id = row.id
        marker = say(lang, "rated_up" if rating is feedback.Rating.UP else "rated_down")
        return {"id": row_id, "index": index}, gr.Group(visible=True), f"{marker} {record['model_label']}"

    def annotate(
        self, pending: dict[str, Any] | None, comment: str, share: bool, messages: Messages, lang: str
    ) -> tuple[Any, ...]:
        """Add the optional comment (and, if allowed, the conversation up to the reply) to the stored rating."""
        if not pending:
            gr.Info(say(lang, "feedback_none"), title=say(lang, "notice_title"))
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        shared = to_history((messages or [])[: pending["index"] + 1]) if share else None
        with self.sessions.begin() as session:
            feedback.annotate(session, pending["id"], comment=comment or "", conversation=shared)
        gr.Info(say(lang, "feedback_thanks"), title=say(lang, "notice_title"))
        return None, gr.Group(visible=False), "", False

    # -- export --------------------------------------------------------------------

    def export(
        self, messages: Messages, replies: dict[str, Any], lang: str | None, versions: dict[str, Any] | None = None
    ) -> str:
        """The conversation as JSON and Markdown downloads, carried in the page itself: the versions shown,
        with a note of the others."""
        return export_links(messages or [], replies or {}, self.handlers.gate.terms, lang, versions or {})
