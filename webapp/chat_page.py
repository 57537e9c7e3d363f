"""The chat page's server side: sending, stopping, retry, undo, edit, continue, feedback and export.

The conversation lives in the chatbot. Each reply is preceded by a quiet
note (a collapsed Gradio "thought" message) that names the model and shows
tokens, speed and time; while the reply is pending the same note shows
「生成中…」, the queue position and load progress. Those notes never reach
the model. What the export and the ratings need about each reply (sampling,
seed, revision, times) is kept in a per-session record keyed by the note's id.

Nothing here raises into Gradio for a visitor's mistake: problems become a
toast in the page's language, and the conversation and the draft stay as they
were (a raised error would mark the chatbot and the message box as failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
from sqlalchemy.orm import Session, sessionmaker

from db import feedback
from inference import AppError, SamplingOptions
from inference.progress import Downloading, Finished, Loading, Queued, Trimmed
from webapp.handlers import Handlers, licence_markdown
from webapp.i18n import pick, say, t
from webapp.models_info import chat_defaults

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
CONTINUE = "continue"


class _Stopped(Exception):
    pass


def text_of(content: Any) -> str:
    """A chat message's text, whether Gradio gives a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if isinstance(content, dict):
        return str(content.get("text", ""))
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


def _plain(messages: Messages) -> Messages:
    """Messages as given back to the chatbot, without stale action buttons."""
    return [{k: v for k, v in m.items() if k in ("role", "content", "metadata")} for m in messages]


def status_text(lang: str | None, item: object) -> str:
    """A waiting status, in the page's language."""
    if isinstance(item, Queued):
        return pick(lang, f"順番待ち: {item.position} 番目です。", f"In the queue: position {item.position}.")
    if isinstance(item, Downloading):
        sizes = f"{item.done / 1e9:.1f} / {item.total / 1e9:.1f} GB"
        return pick(lang, f"モデルをダウンロードしています({sizes})", f"Downloading the model ({sizes})")
    if isinstance(item, Loading):
        share = f"{item.fraction:.0%}" if item.fraction is not None else "…"
        return pick(lang, f"モデルを読み込んでいます({share})", f"Loading the model ({share})")
    if isinstance(item, Trimmed):
        return trimmed_text(lang, item.dropped_turns)
    describe = getattr(item, "describe", None)
    return describe() if describe else ""


def trimmed_text(lang: str | None, dropped: int) -> str:
    return pick(
        lang,
        f"会話がモデルの文脈長を超えたため、古い発言 {dropped} 件を省いて返答しました。",
        f"The conversation outgrew the model's context: the oldest {dropped} turns were left out of this reply.",
    )


@dataclass
class Outcome:
    """How one reply ended, as shown in its note."""

    label: str
    seconds: float
    tokens: int = 0
    stopped: bool = False
    cut: bool = False
    dropped_turns: int = 0


def note_title(lang: str | None, o: Outcome) -> str:
    """The quiet line above a reply: model, tokens, speed; marked when stopped or cut."""
    parts = [o.label]
    if o.tokens > 0:
        parts.append(f"{o.tokens} {say(lang, 'tokens')}")
        if o.seconds > 0:
            parts.append(f"{o.tokens / o.seconds:.1f} {say(lang, 'tok_s')}")
    marks = [say(lang, "stopped")] if o.stopped else [say(lang, "cut")] if o.cut else []
    return " · ".join(marks + parts)


def note_body(lang: str | None, record: dict[str, Any]) -> str:
    """What the note shows when opened: the exact settings behind the reply."""
    s = record["sampling"]
    seed = s.get("seed")
    rows = [
        f"model: `{record['model_id']}`" + (f" (revision `{record['revision']}`)" if record.get("revision") else ""),
        "sampling: "
        + ", ".join(f"{k}={s[k]}" for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")),
        f"seed: {seed if seed is not None else pick(lang, 'なし(ランダム)', 'none (random)')}",
        f"{pick(lang, '開始', 'started')}: {record['started_at']} UTC",
    ]
    if record.get("dropped_turns"):
        rows.append(trimmed_text(lang, record["dropped_turns"]))
    return "\n\n".join(rows)


@dataclass
class _Request:
    """What every reply needs besides the conversation."""

    model_id: str
    sampling: dict[str, Any]
    replies: dict[str, Any]
    lang: str | None
    receipt: str | None
    request: gr.Request
    profile: gr.OAuthProfile | None


_SKIP = (gr.skip(), gr.skip(), gr.skip())
# The last update of a reply. Gradio sends a generator's final value once more when the event
# completes, and that message can arrive after the visitor's next reply has begun: so the final
# value changes nothing, and the next reply's conversation is never set back.
_SETTLED = _SKIP


class ChatPage:
    """The chat tab's handlers. Outputs of the reply handlers: chatbot, message box, records."""

    def __init__(self, handlers: Handlers, sessions: sessionmaker[Session]) -> None:
        self.handlers = handlers
        self.sessions = sessions
        self.registry = handlers.inference.registry
        self._stops: dict[str, asyncio.Event] = {}
        self._exports = Path(tempfile.mkdtemp(prefix="llmjp-conversations-"))

    # -- replies ---------------------------------------------------------------

    def _key(self, request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "anonymous"

    async def _reply(self, shown: Messages, text: str, draft: Any, r: _Request) -> AsyncIterator[tuple[Any, ...]]:
        """Validate, then stream the reply to ``text`` after ``shown``; ``draft`` is what the box shows on failure."""
        key = self._key(r.request)
        if key in self._stops:
            gr.Info(say(r.lang, "busy"), title=say(r.lang, "notice_title"))
            yield _SKIP
            return
        shown = _plain(shown)
        # Claimed before the checks, so a second Enter cannot slip in while they run.
        stopped = self._stops[key] = asyncio.Event()
        stream = self.handlers.stream_reply(
            r.request, r.profile, r.receipt, text, r.model_id, to_history(shown), r.sampling
        )
        try:
            await anext(stream)  # every check; the first item says the reply is admitted
        except (AppError, StopAsyncIteration) as exc:
            self._release(key, stopped)
            await stream.aclose()
            if isinstance(exc, AppError):
                gr.Warning(pick(r.lang, exc.ja, exc.en), title=say(r.lang, "notice_title"))
            yield _SKIP
            return
        except BaseException:
            self._release(key, stopped)
            raise
        spec = self.registry.get(r.model_id)
        rid = uuid.uuid4().hex[:12]
        started = datetime.now(UTC)
        record: dict[str, Any] = {
            "model_id": spec.id,
            "model_label": spec.label,
            "revision": None,
            "sampling": SamplingOptions.parse(**r.sampling).model_dump(),  # as admitted
            "started_at": started.isoformat(timespec="seconds"),
        }
        user = {"role": "user", "content": text}

        def note(title: str, body: str, *, pending: bool, log_line: str = "", seconds: float | None = None) -> dict:
            meta: dict[str, Any] = {"title": title, "id": rid, "status": "pending" if pending else "done"}
            if log_line:
                meta["log"] = log_line
            if seconds is not None:
                meta["duration"] = round(seconds, 2)
            return {"role": "assistant", "content": body, "metadata": meta}

        generating = say(r.lang, "generating")
        yield [*shown, user, note(generating, "", pending=True, log_line=spec.label)], "", gr.skip()
        reply, finished, dropped, was_stopped = "", None, 0, False
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with contextlib.aclosing(stream):
                while True:
                    try:
                        _, item = await _next_or_stop(stream, stopped)
                    except StopAsyncIteration:
                        break
                    except _Stopped:
                        was_stopped = True
                        break
                    if isinstance(item, str):
                        reply += item
                        pending = note(generating, "", pending=True, log_line=spec.label)
                        yield [*shown, user, pending, {"role": "assistant", "content": reply}], gr.skip(), gr.skip()
                    elif isinstance(item, Finished):
                        finished = item
                    else:
                        if isinstance(item, Trimmed):
                            dropped = item.dropped_turns
                            gr.Info(trimmed_text(r.lang, dropped), title=say(r.lang, "notice_title"))
                        pending = note(generating, "", pending=True, log_line=status_text(r.lang, item))
                        parts = [{"role": "assistant", "content": reply}] if reply else []
                        yield [*shown, user, pending, *parts], gr.skip(), gr.skip()
        except AppError as exc:
            gr.Warning(pick(r.lang, exc.ja, exc.en), title=say(r.lang, "notice_title"))
            yield shown, draft, gr.skip()
            yield _SETTLED
            return
        except Exception:
            log.exception("reply failed")
            gr.Warning(say(r.lang, "error_title"), title=say(r.lang, "notice_title"))
            yield shown, draft, gr.skip()
            yield _SETTLED
            return
        finally:
            self._release(key, stopped)
        seconds = finished.seconds if finished and finished.seconds > 0 else loop.time() - t0
        if finished is not None:
            dropped = finished.dropped_turns or dropped
            record["revision"] = finished.revision
        outcome = Outcome(
            label=spec.label,
            seconds=seconds,
            tokens=finished.completion_tokens if finished else 0,
            stopped=was_stopped or (finished is not None and finished.finish_reason == "cancelled"),
            cut=finished is not None and finished.finish_reason == "length",
            dropped_turns=dropped,
        )
        record |= {
            "seconds": round(seconds, 3),
            "prompt_tokens": finished.prompt_tokens if finished else None,
            "completion_tokens": outcome.tokens or None,
            "finish_reason": "cancelled" if outcome.stopped else (finished.finish_reason if finished else None),
            "dropped_turns": dropped,
        }
        replies = {**r.replies, rid: record}
        answer: dict[str, Any] = {"role": "assistant", "content": reply}
        if outcome.cut:
            answer["options"] = [{"label": say(r.lang, "continue"), "value": CONTINUE}]
        done = note(note_title(r.lang, outcome), note_body(r.lang, record), pending=False, seconds=seconds)
        yield [*shown, user, done, answer], gr.skip(), replies
        yield _SETTLED

    def _release(self, key: str, stopped: asyncio.Event) -> None:
        # Only this reply's own claim: a late cleanup must never drop the next reply's stop event.
        if self._stops.get(key) is stopped:
            del self._stops[key]

    async def stop(self, request: gr.Request) -> None:
        """Stop this visitor's reply: it leaves the queue or ends within one token step."""
        if event := self._stops.get(self._key(request)):
            event.set()

    def _request(self, model_id, sampling, replies, lang, receipt, request, profile) -> _Request:
        return _Request(model_id, sampling, dict(replies or {}), lang, receipt, request, profile)

    async def send(
        self,
        message: str,
        messages: Messages,
        model_id: str,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: str | None,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Send the typed message."""
        sampling = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        r = self._request(model_id, sampling, replies, lang, receipt, request, profile)
        async for out in self._reply(messages or [], message, gr.skip(), r):
            yield out

    async def retry(
        self,
        messages: Messages,
        model_id: str,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: str | None,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Answer the last message again (with the current model and settings)."""
        sampling = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        r = self._request(model_id, sampling, replies, lang, receipt, request, profile)
        u = last_user(messages or [])
        if u is None:
            yield _SKIP
            return
        async for out in self._reply(messages[:u], text_of(messages[u]["content"]), gr.skip(), r):
            yield out

    async def edit(
        self,
        messages: Messages,
        model_id: str,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: str | None,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        data: gr.EditData,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """An edited message replaces it and everything after it, and is answered afresh."""
        sampling = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        r = self._request(model_id, sampling, replies, lang, receipt, request, profile)
        index = data.index if isinstance(data.index, int) else None
        if index is None or not (0 <= index < len(messages or [])) or messages[index].get("role") != "user":
            yield _SKIP
            return
        async for out in self._reply(messages[:index], text_of(data.value), gr.skip(), r):
            yield out

    async def option(
        self,
        messages: Messages,
        model_id: str,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: str | None,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        data: gr.SelectData,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """The "continue" action under a reply cut at the length limit."""
        sampling = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        r = self._request(model_id, sampling, replies, lang, receipt, request, profile)
        if data.value != CONTINUE:
            yield _SKIP
            return
        async for out in self._reply(messages or [], say(lang, "continue_prompt"), gr.skip(), r):
            yield out

    async def example(
        self,
        messages: Messages,
        model_id: str,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        max_new_tokens: int,
        seed: str | None,
        replies: dict[str, Any],
        lang: str,
        receipt: str | None,
        data: gr.SelectData,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """An example prompt on the empty chat is sent as the first message."""
        sampling = _sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        r = self._request(model_id, sampling, replies, lang, receipt, request, profile)
        value = data.value
        text = value.get("text", "") if isinstance(value, dict) else text_of(value)
        async for out in self._reply(messages or [], text, gr.skip(), r):
            yield out

    def undo(self, messages: Messages, request: gr.Request) -> tuple[Any, Any]:
        """Take back the last message: it returns to the box, its reply is dropped."""
        u = last_user(messages or [])
        if u is None or self._key(request) in self._stops:
            return gr.skip(), gr.skip()
        return _plain(messages[:u]), text_of(messages[u]["content"])

    def new_chat(self, request: gr.Request) -> tuple[Any, ...]:
        """An empty conversation; consent and settings stay."""
        if event := self._stops.get(self._key(request)):
            event.set()
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
        return card, licence_markdown(spec, lang or "ja")

    # -- feedback ----------------------------------------------------------------

    def rate(self, messages: Messages, replies: dict[str, Any], lang: str, data: gr.LikeData) -> tuple[Any, ...]:
        """A 👍/👎 on a reply is stored at once; the comment box opens for an optional comment."""
        index = data.index if isinstance(data.index, int) else -1
        rid = _reply_id(messages or [], index)
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
        marker = "👍" if rating is feedback.Rating.UP else "👎"
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

    def export(self, messages: Messages, replies: dict[str, Any]) -> tuple[Any, Any]:
        """The conversation as JSON and Markdown files, for the two download buttons."""
        if not to_history(messages or []):
            return (
                gr.DownloadButton(t("export_json"), value=None, interactive=False),
                gr.DownloadButton(t("export_md"), value=None, interactive=False),
            )
        data = conversation_json(messages, replies or {}, self.handlers.gate.terms)
        stem = f"llmjp-chat-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        folder = self._exports / uuid.uuid4().hex
        folder.mkdir()
        as_json = folder / f"{stem}.json"
        as_json.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        as_md = folder / f"{stem}.md"
        as_md.write_text(conversation_markdown(data), encoding="utf-8")
        return (
            gr.DownloadButton(t("export_json"), value=str(as_json), interactive=True),
            gr.DownloadButton(t("export_md"), value=str(as_md), interactive=True),
        )


async def _next_or_stop(stream: AsyncIterator[Any], stopped: asyncio.Event) -> Any:
    """The stream's next item, or ``_Stopped`` once the visitor presses Stop (the stream is then cancelled)."""
    if stopped.is_set():
        raise _Stopped
    nxt = asyncio.ensure_future(anext(stream))
    waiter = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({nxt, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if nxt.done():
        return nxt.result()
    nxt.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await nxt
    raise _Stopped


def _sampling(
    temperature: float, top_p: float, top_k: int, repetition_penalty: float, max_new_tokens: int, seed: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "max_new_tokens": max_new_tokens,
        "seed": None,
    }
    typed = str(seed).strip() if seed is not None else ""
    if typed:
        # A whole number; anything else is left as typed for validation to refuse in words.
        values["seed"] = int(typed) if typed.isdecimal() and typed.isascii() else typed
    return values


def _reply_id(messages: Messages, index: int) -> str | None:
    """The id of the note belonging to the reply at ``index`` (the note just before it, or the note itself)."""
    for i in range(min(index, len(messages) - 1), -1, -1):
        if rid := note_id(messages[i]):
            return rid
        if messages[i].get("role") == "user":
            return None
    return None


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
                turn |= {k: v for k, v in current.items()}
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
    for turn in data["messages"]:
        if turn["role"] == "user":
            lines += ["## User", "", turn["content"], ""]
        else:
            head = turn.get("model_id", "assistant")
            lines += [f"## {head}", "", turn["content"], ""]
            if "sampling" in turn:
                s = turn["sampling"]
                settings = ", ".join(f"{k}={v}" for k, v in s.items())
                lines += [f"<sub>{settings}; {turn.get('seconds', '?')} s; {turn.get('started_at', '')} UTC</sub>", ""]
    return "\n".join(lines)
