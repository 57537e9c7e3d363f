"""Past conversations, kept in the visitor's own browser: what one is, how the list is bounded and checked.

The list lives in the browser's storage (``gr.BrowserState``, as Gradio's
ChatInterface ``save_history`` keeps it) and comes to the server only with the
events that read or change it; the server keeps none of it, unless a
signed-in visitor opts in to keep it there too (``db.kept``, with the same
bounds, through ``webapp.chat.kept_server``). Whatever comes
back from a browser is checked like any other input before it is used: a
conversation has the same bounds as /chat's history, and the whole list is
bounded so that it fits in one request.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from db import kept
from inference import InvalidInput, Registry, SamplingOptions
from webapp.chat.messages import Messages, is_note, text_of, to_history
from webapp.handlers import HISTORY_CHARS_PER_CONTEXT_TOKEN, MAX_TURN_CHARS, MAX_TURNS, parse_history

# The server's table for signed-in visitors who opt in holds the same list, with the same bounds.
MAX_CHATS = kept.MAX_CHATS
# A reply's note holds its settings and the exact prompt, which is about as long as the conversation.
MAX_NOTE_CHARS = 4 * MAX_TURN_CHARS
# A message, its note and its reply for each turn.
MAX_MESSAGES = 3 * MAX_TURNS
MAX_TITLE_CHARS = 80
MAX_VERSIONS = 20
MAX_QUERY_CHARS = 200
# The whole list travels with the events that change it; the app's request bound (webapp.guard, 2 MiB)
# must hold it even in three-byte characters, with a conversation beside it.
MAX_STORE_CHARS = kept.MAX_CHARS
CHAT_ID = re.compile(r"[0-9a-f]{12}")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


class BadStore(InvalidInput):
    """What a browser sent as its conversations is not what this page keeps there; nothing was changed."""

    def __init__(self) -> None:
        super().__init__(
            "保存された会話の形式が正しくないため、何も変更しませんでした。ページを再読み込みしてください。",
            "The saved conversations are not in the expected form; nothing was changed. Reload the page.",
        )


class Saved(BaseModel):
    """One kept conversation: its messages and notes, the records behind its replies, its versions, its settings."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(pattern=CHAT_ID.pattern)
    title: str = Field(max_length=MAX_TITLE_CHARS)
    renamed: bool = False
    updated: str = Field(max_length=40)
    model: str = Field(max_length=200)
    sampling: dict[str, float | int | str | None] = Field(max_length=8)
    messages: list[dict[str, Any]] = Field(max_length=MAX_MESSAGES)
    replies: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=MAX_MESSAGES)
    versions: dict[str, Any] = Field(default_factory=dict, max_length=MAX_MESSAGES)


def check_messages(messages: object, *, max_chars: int | None = None) -> Messages:
    """A conversation as the chatbot holds it, held to /chat's bounds; raises ``InvalidInput``."""
    if messages is None:
        return []
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
        raise BadStore()
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadStore()
        meta = m.get("metadata")
        if meta is not None and (not isinstance(meta, dict) or len(json.dumps(meta, ensure_ascii=False)) > 2000):
            raise BadStore()
        content = m.get("content")
        if not isinstance(content, str | list | dict | None):
            raise BadStore()
        if is_note(m) and len(text_of(content)) > MAX_NOTE_CHARS:
            raise BadStore()
    # The turns themselves: the same checks as /chat's history (count, length, encoding, total).
    parse_history(to_history(messages), max_chars=max_chars)
    return messages


def check_versions(versions: object, depth: int = 0) -> dict[str, Any]:
    """Versions kept behind the arrows (``webapp.chat.versions``): each stored tail is a conversation too."""
    if versions is None:
        return {}
    if not isinstance(versions, dict) or len(versions) > MAX_MESSAGES or depth > 8:
        raise BadStore()
    for key, entry in versions.items():
        if not (isinstance(key, str) and key.isdecimal() and len(key) < 6 and isinstance(entry, dict)):
            raise BadStore()
        slots, shown = entry.get("slots"), entry.get("shown")
        if not isinstance(slots, list) or not 1 <= len(slots) <= MAX_VERSIONS + 1:
            raise BadStore()
        if not isinstance(shown, int) or not 0 <= shown < len(slots) or slots[shown] is not None:
            raise BadStore()
        for i, slot in enumerate(slots):
            if slot is None and i == shown:
                continue
            if not isinstance(slot, dict):
                raise BadStore()
            check_messages(slot.get("messages"))
            check_versions(slot.get("versions"), depth + 1)
    return versions


def check_replies(replies: object, registry: Registry) -> dict[str, Any]:
    """The records behind the replies (for notes, export and ratings); records of models not offered here are
    left out, and a record's sampling must be one the app accepts."""
    if replies is None:
        return {}
    if not isinstance(replies, dict) or len(replies) > MAX_MESSAGES:
        raise BadStore()
    kept = {}
    for rid, record in replies.items():
        if not isinstance(rid, str) or len(rid) > 64 or not isinstance(record, dict):
            raise BadStore()
        if len(json.dumps(record, ensure_ascii=False)) > MAX_NOTE_CHARS:
            raise BadStore()
        if record.get("model_id") not in registry.specs:
            continue
        sampling = record.get("sampling")
        try:
            SamplingOptions.parse(**sampling) if isinstance(sampling, dict) else None
        except InvalidInput:
            raise BadStore() from None
        if not isinstance(sampling, dict) or not isinstance(record.get("model_label"), str):
            raise BadStore()
        kept[rid] = record
    return kept


def check_store(store: object, registry: Registry) -> list[Saved]:
    """The browser's list of conversations, checked whole; raises ``BadStore``."""
    if store is None:
        return []
    if not isinstance(store, list) or len(store) > MAX_CHATS:
        raise BadStore()
    if len(json.dumps(store, ensure_ascii=False)) > 2 * MAX_STORE_CHARS:
        raise BadStore()
    try:
        chats = [Saved.model_validate(c) for c in store]
    except ValidationError:
        raise BadStore() from None
    limit = max(spec.context for spec in registry.specs.values()) * HISTORY_CHARS_PER_CONTEXT_TOKEN
    for chat in chats:
        check_messages(chat.messages, max_chars=limit)
        check_versions(chat.versions)
        chat.replies = check_replies(chat.replies, registry)
    if len({c.id for c in chats}) != len(chats):
        raise BadStore()
    return chats


def dump(chats: list[Saved]) -> list[dict[str, Any]]:
    return [c.model_dump() for c in chats]


def title_of(messages: Messages) -> str:
    """A conversation's title: its first message, on one line, cut to fit the list."""
    first = next((text_of(m.get("content")) for m in messages if m.get("role") == "user"), "")
    line = " ".join(first.split())
    return line if len(line) <= MAX_TITLE_CHARS else line[: MAX_TITLE_CHARS - 1] + "…"


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def upsert(chats: list[Saved], chat: Saved) -> tuple[list[Saved], int]:
    """``chat`` first (newest first), replacing its older self; the oldest others go while the list is too
    long or too big. Returns the list and how many were dropped."""
    others = [c for c in chats if c.id != chat.id]
    kept = [chat, *others][:MAX_CHATS]
    while len(kept) > 1 and len(json.dumps(dump(kept), ensure_ascii=False)) > MAX_STORE_CHARS:
        kept.pop()
    return kept, len(others) + 1 - len(kept)


def merge(chats: list[Saved], others: list[Saved]) -> tuple[list[Saved], int]:
    """Both lists as one, newest first: a conversation in both is kept as it was last changed (``updated``,
    ``chats`` winning a tie), and the oldest go while the list is too long or too big. Returns the list and how
    many were dropped."""
    newest: dict[str, Saved] = {}
    for chat in [*chats, *others]:
        if chat.id not in newest or chat.updated > newest[chat.id].updated:
            newest[chat.id] = chat
    # The times are ISO 8601 in UTC, all written by ``now``: as text they sort as times.
    merged = sorted(newest.values(), key=lambda c: c.updated, reverse=True)[:MAX_CHATS]
    while len(merged) > 1 and len(json.dumps(dump(merged), ensure_ascii=False)) > MAX_STORE_CHARS:
        merged.pop()
    return merged, len(newest) - len(merged)


def matches(chat: Saved, query: str) -> bool:
    """Whether a search finds the conversation: in its title or any of its turns, ignoring case."""
    q = query.casefold().strip()
    if not q:
        return True
    return q in chat.title.casefold() or any(q in t["content"].casefold() for t in to_history(chat.messages))


def listing(chats: list[Saved], query: str = "") -> list[tuple[str, str]]:
    """The sidebar's choices, newest first: (title, id)."""
    return [(c.title or "…", c.id) for c in chats if matches(c, query)]
