"""What the chatbot's messages mean: turns of the conversation, and the quiet notes between them.

Each reply is preceded by a note (a collapsed Gradio "thought" message) that
names the model and shows tokens, speed and time; while the reply is pending
the same note shows 「生成中…」, the queue position and load progress. Notes
never reach the model. What the export and the ratings need about each reply
is kept in a per-session record keyed by the note's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.progress import Status, Trimmed
from webapp.chat.prompt_view import prompt_section
from webapp.i18n import pick, say

Messages = list[dict[str, Any]]


def text_of(content: Any) -> str:
    """A chat message's text, whether Gradio gives a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts from a client are not trusted to be well formed
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    return ""


def note_id(message: dict[str, Any]) -> str | None:
    """The reply id of a note message, or None for a turn of the conversation."""
    meta = message.get("metadata") or {}
    return str(meta["id"]) if meta.get("title") and meta.get("id") is not None else None


def is_note(message: dict[str, Any]) -> bool:
    return bool((message.get("metadata") or {}).get("title"))


def to_history(messages: Messages) -> list[dict[str, str]]:
    """The conversation as the model sees it: no notes, no empty turns."""
    turns = []
    for m in messages:
        text = text_of(m.get("content"))
        if not is_note(m) and m.get("role") in ("user", "assistant") and text.strip():
            turns.append({"role": m["role"], "content": text})
    return turns


def last_user(messages: Messages) -> int | None:
    """Index of the last user turn."""
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)


def plain(messages: Messages) -> Messages:
    """Messages as given back to the chatbot, without stale action buttons."""
    return [{k: v for k, v in m.items() if k in ("role", "content", "metadata")} for m in messages]


def reply_id(messages: Messages, index: int) -> str | None:
    """The id of the note belonging to the reply at ``index`` (the note just before it, or the note itself)."""
    for i in range(min(index, len(messages) - 1), -1, -1):
        if rid := note_id(messages[i]):
            return rid
        if messages[i].get("role") == "user":
            return None
    return None


def through_reply(messages: Messages, rid: str) -> Messages:
    """The conversation up to and including reply ``rid``: its note and its text (what a rating is about)."""
    start = next((i for i, m in enumerate(messages) if note_id(m) == rid), None)
    if start is None:
        return []
    end = start
    for i in range(start + 1, len(messages)):
        if messages[i].get("role") == "user" or is_note(messages[i]):
            break
        end = i
    return messages[: end + 1]


def note(rid: str, title: str, body: str, *, pending: bool, log_line: str = "", seconds: float | None = None) -> dict:
    """The note before reply ``rid``: pending (Gradio draws a spinner) or done."""
    meta: dict[str, Any] = {"title": title, "id": rid, "status": "pending" if pending else "done"}
    if log_line:
        meta["log"] = log_line
    if seconds is not None:
        meta["duration"] = round(seconds, 2)
    return {"role": "assistant", "content": body, "metadata": meta}


def status_text(lang: str | None, item: Status) -> str:
    """A waiting status, in the page's language (the words are ``inference.progress``'s)."""
    texts = getattr(item, "texts", None)
    return pick(lang, *texts()) if texts else ""


def trimmed_text(lang: str | None, dropped: int) -> str:
    return status_text(lang, Trimmed(dropped))


@dataclass
class Outcome:
    """How one reply ended, as shown in its note."""

    label: str
    seconds: float
    tokens: int = 0
    stopped: bool = False
    cut: bool = False
    shared: bool = False
    """Ended early so that visitors waiting for the model could be served."""
    dropped_turns: int = 0


def short_name(label: str) -> str:
    """A model's label without its parenthesised details: one short line on a phone."""
    return label.split(" (", 1)[0]


def note_title(lang: str | None, o: Outcome) -> str:
    """The quiet line above a reply: short model name, tokens, speed; marked when stopped or cut."""
    parts = [short_name(o.label)]
    if o.tokens > 0:
        parts.append(f"{o.tokens} {say(lang, 'tokens')}")
        if o.seconds > 0:
            parts.append(f"{o.tokens / o.seconds:.1f} {say(lang, 'tok_s')}")
    marks = (
        [say(lang, "stopped")]
        if o.stopped
        else [say(lang, "shared")]
        if o.shared
        else [say(lang, "cut")]
        if o.cut
        else []
    )
    # The mark last: where a phone cuts the line short, model, tokens and speed still show.
    return " · ".join(parts + marks)


ENGINE_NAMES = {"vllm": "vLLM", "transformers": "transformers"}


def note_body(lang: str | None, record: dict[str, Any]) -> str:
    """What the note shows when opened: the exact settings behind the reply."""
    s = record["sampling"]
    seed = s.get("seed")
    rows = [
        f"{record.get('model_label', record['model_id'])}",
        f"model: `{record['model_id']}`" + (f" (revision `{record['revision']}`)" if record.get("revision") else ""),
        f"engine: {ENGINE_NAMES.get(record.get('engine', ''), record.get('engine', '?'))}",
        "sampling: "
        + ", ".join(f"{k}={s[k]}" for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")),
        f"seed: {seed if seed is not None else pick(lang, 'なし(ランダム)', 'none (random)')}",
        f"{pick(lang, '開始', 'started')}: {record['started_at']} UTC",
    ]
    if record.get("dropped_turns"):
        rows.append(trimmed_text(lang, record["dropped_turns"]))
    if shown := prompt_section(lang, record):
        rows.append(shown)
    return "\n\n".join(rows)
