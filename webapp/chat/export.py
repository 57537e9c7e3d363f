"""The conversation as a file to keep: JSON with what produced each reply, and Markdown to read."""

from __future__ import annotations

import html
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from webapp.chat.messages import Messages, note_id, text_of, to_history
from webapp.chat.versions import others
from webapp.downloads import download_link
from webapp.i18n import say


def export_links(
    messages: Messages, replies: dict[str, Any], terms: Any, lang: str | None, versions: dict[str, Any] | None = None
) -> str:
    """The two downloads of the conversation as it now is, labelled in the page's language."""
    if not to_history(messages):
        return f"<p>{html.escape(say(lang, 'nothing_to_export'))}</p>"
    data = conversation_json(messages, replies, terms)
    if hidden := others(messages, versions or {}):
        data["other_versions"] = hidden
    stem = f"llmjp-chat-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    as_json = json.dumps(data, ensure_ascii=False, indent=2)
    links = [
        download_link(as_json, f"{stem}.json", "application/json", say(lang, "export_json"), elem_id="export-json"),
        download_link(
            conversation_markdown(data), f"{stem}.md", "text/markdown", say(lang, "export_md"), elem_id="export-md"
        ),
    ]
    return f'<p class="export-links">{" ".join(links)}</p>'


def conversation_json(messages: Messages, replies: dict[str, Any], terms: Any) -> dict[str, Any]:
    """The conversation with what produced each reply: model, revision, sampling, seed, times."""
    turns: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for m in messages:
        if rid := note_id(m):
            current = replies.get(rid)
            continue
        text = text_of(m.get("content"))
        if m.get("role") == "user":
            turns.append({"role": "user", "content": text})
            current = None
        elif m.get("role") == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": text}
            if current:
                turn |= {k: v for k, v in current.items() if not k.startswith("_")}  # not the server's signature
            turns.append(turn)
    return {
        "format": "llmjp-chat-export/1",
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "terms": {"id": terms.id, "sha256": terms.sha256},
        "messages": turns,
    }


def conversation_markdown(data: dict[str, Any]) -> str:
    """The exported conversation as Markdown, for reading."""
    lines = [
        "# LLM-jp Chat",
        "",
        f"- exported: {data['exported_at']} UTC",
        f"- terms: {data['terms']['id']} (SHA-256 {data['terms']['sha256']})",
        "",
    ]
    # Which message a version note belongs to: the n-th user message of the conversation shown.
    notes = {v["user"]: v for v in data.get("other_versions", [])}
    users = 0
    for turn in data["messages"]:
        if turn["role"] == "user":
            lines += ["## User", "", turn["content"], ""]
            if v := notes.get(users):
                hidden = "; ".join(f"「{h}」" for h in v["hidden"])
                lines += [f"<sub>version {v['shown']} of {v['count']} shown; the others began: {hidden}</sub>", ""]
            users += 1
        else:
            head = turn.get("model_id", "assistant")
            lines += [f"## {head}", "", turn["content"], ""]
            if "sampling" in turn:
                s = turn["sampling"]
                settings = ", ".join(f"{k}={v}" for k, v in s.items())
                lines += [f"<sub>{settings}; {turn.get('seconds', '?')} s; {turn.get('started_at', '')} UTC</sub>", ""]
    return "\n".join(lines)
