"""Versions, not loss: an edit or a retry keeps what it replaces, behind arrows (‹ 2/3 ›) at that message.

The versions of a conversation are a dict keyed by the index (in the
chatbot's messages) of the user message where the conversation forked:
``{"slots": [...], "shown": k}``. The slot shown is ``None``: its messages
are the ones in the chatbot from that index on. Every other slot holds a tail
as it was (``{"messages": [...], "versions": {...}}``), with the forks further
down inside it, so switching back brings back that whole conversation below.
"""

from __future__ import annotations

import copy
from typing import Any

from webapp.chat.history import MAX_VERSIONS
from webapp.chat.messages import Messages, last_user, plain, text_of

Versions = dict[str, Any]
# Working keys, never kept with the conversation: the versions before a fork (to take it back if no reply
# comes), where it was, and the conversation as last settled on the server. The browser has already changed
# its copy when an edit's event starts, so a fork keeps what the server last saw.
_BEFORE, _AT, _SHOWN = "_before", "_at", "_shown"


def _below(versions: Versions, index: int) -> tuple[Versions, Versions]:
    """The forks at or above ``index``, and those below it."""
    above = {k: v for k, v in versions.items() if k.isdecimal() and int(k) <= index}
    below = {k: v for k, v in versions.items() if k.isdecimal() and int(k) > index}
    return above, below


def fork(messages: Messages, versions: Versions, index: int) -> Versions:
    """Before an edit or a retry at ``index`` replaces what follows: keep the tail as a version."""
    if not (0 <= index < len(messages)) or messages[index].get("role") != "user":
        return versions
    before = copy.deepcopy(settled(versions))
    above, below = _below(before, index)
    key = str(index)
    entry = copy.deepcopy(above.get(key)) or {"slots": [None], "shown": 0}
    entry["slots"][entry["shown"]] = {"messages": plain(messages[index:]), "versions": below}
    entry["slots"].append(None)
    # The oldest versions go first when there are too many.
    while len(entry["slots"]) > MAX_VERSIONS + 1:
        entry["slots"].pop(0)
    entry["shown"] = len(entry["slots"]) - 1
    return {**above, key: entry, _BEFORE: before, _AT: index}


def settle(messages: Messages, versions: Versions) -> Versions:
    """After the reply: a reply that never came (refused, failed, stopped before admission) left the
    conversation as it was, so the fork made for it is taken back."""
    if _BEFORE not in versions:
        return versions
    index, before = versions[_AT], versions[_BEFORE]
    entry = versions.get(str(index)) or {}
    kept = entry.get("slots", [None, None])[-2]
    if isinstance(kept, dict) and plain(messages[index:]) == kept.get("messages"):
        return before
    return settled(versions)


def settled(versions: Versions) -> Versions:
    """The versions to keep: without the working keys."""
    return {k: v for k, v in versions.items() if not k.startswith("_")}


def showing(versions: Versions, messages: Messages) -> Versions:
    """``versions`` remembering ``messages`` as the conversation shown now."""
    return {**versions, _SHOWN: plain(messages)}


def last_shown(versions: Versions) -> Messages | None:
    shown = versions.get(_SHOWN)
    return shown if isinstance(shown, list) else None


def prune(messages: Messages, versions: Versions) -> Versions:
    """After undo or a new chat: forks past the end of the conversation, or no longer at a user message, go."""
    return {
        k: v for k, v in settled(versions).items() if int(k) < len(messages) and messages[int(k)].get("role") == "user"
    }


def switch(messages: Messages, versions: Versions, index: int, step: int) -> tuple[Messages, Versions] | None:
    """Show the version ``step`` away (-1 or +1) at ``index``; None when there is none."""
    versions = settled(versions)
    entry = versions.get(str(index))
    if entry is None or index >= len(messages):
        return None
    target = entry["shown"] + step
    if not 0 <= target < len(entry["slots"]) or step not in (-1, 1):
        return None
    above, below = _below(versions, index)
    entry = copy.deepcopy(entry)
    entry["slots"][entry["shown"]] = {"messages": plain(messages[index:]), "versions": below}
    chosen = entry["slots"][target]
    entry["slots"][target] = None
    entry["shown"] = target
    return plain(messages[:index]) + chosen["messages"], {**above, str(index): entry, **chosen["versions"]}


def arrows(messages: Messages, versions: Versions) -> list[dict[str, int]]:
    """Where the page draws arrows: the n-th user message, which version shows, of how many."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    marks = []
    for key, entry in sorted(settled(versions).items(), key=lambda kv: int(kv[0])):
        index = int(key)
        if index in users and len(entry["slots"]) > 1:
            marks.append(
                {"user": users.index(index), "index": index, "shown": entry["shown"], "count": len(entry["slots"])}
            )
    return marks


def others(messages: Messages, versions: Versions) -> list[dict[str, Any]]:
    """The versions not shown, for the export's note: at which user message (counted from 0 in the
    conversation shown), which version shows of how many, and the message each hidden one began with."""
    out = []
    for key, entry in sorted(settled(versions).items(), key=lambda kv: int(kv[0])):
        hidden = [s for s in entry["slots"] if s is not None]
        out.append(
            {
                "at_message": int(key),
                "user": sum(1 for m in messages[: int(key)] if m.get("role") == "user"),
                "shown": entry["shown"] + 1,
                "count": len(entry["slots"]),
                "hidden": [text_of(s["messages"][0].get("content")) if s["messages"] else "" for s in hidden],
            }
        )
    return out


def retried_at(messages: Messages) -> int | None:
    """The message a retry forks at: the last user message."""
    return last_user(messages)
