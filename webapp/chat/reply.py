"""Streaming a reply into the chatbot, and stopping it.

Every way into a reply (send, retry, edit, continue, example) differs only in
what is answered after which turn; ``ReplyStreams.entry`` makes the handler
for each from a small "pick" function.

Nothing here raises into Gradio for a visitor's mistake: problems become a
toast in the page's language, and the conversation and the draft stay as they
were (a raised error would mark the chatbot and the message box as failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gradio as gr

from inference import AppError, ModelSpec, SamplingOptions
from inference.progress import Finished, Trimmed
from webapp.chat.messages import (
    Messages,
    Outcome,
    last_user,
    note,
    note_body,
    note_id,
    note_title,
    plain,
    status_text,
    text_of,
    to_history,
    trimmed_text,
)
from webapp.chat.models_info import engine_of
from webapp.handlers import Admitted, Handlers, sampling_values
from webapp.i18n import pick, say

log = logging.getLogger(__name__)

CONTINUE = "continue"
Update = tuple[Any, ...]
"""What a reply handler yields: the chatbot, the message box, the reply records."""

SKIP: Update = (gr.skip(), gr.skip(), gr.skip())
# The last update of a reply. Gradio sends a generator's final value once more when the event
# completes, and that message can arrive after the visitor's next reply has begun: so the final
# value changes nothing, and the next reply's conversation is never set back.
SETTLED = SKIP


@dataclass(frozen=True)
class Trigger:
    """What set a reply off: the message box, the conversation as shown, the event's data, the page's language."""

    message: str
    messages: Messages
    data: gr.EventData
    lang: str | None


Pick = Callable[[Trigger], tuple[Messages, str] | None]
"""What to answer after which turns, or None when the event asks for no reply."""


def typed(t: Trigger) -> tuple[Messages, str]:
    """Send: the message in the box, after the whole conversation."""
    return t.messages, t.message


def again(t: Trigger) -> tuple[Messages, str] | None:
    """Retry: the last message once more, with the current model and settings."""
    u = last_user(t.messages)
    return None if u is None else (t.messages[:u], text_of(t.messages[u]["content"]))


def edited(t: Trigger) -> tuple[Messages, str] | None:
    """Edit: the edited message replaces it and everything after it."""
    index = t.data.index if isinstance(t.data.index, int) else None
    if index is None or not (0 <= index < len(t.messages)) or t.messages[index].get("role") != "user":
        return None
    return t.messages[:index], text_of(t.data.value)


def continued(t: Trigger) -> tuple[Messages, str] | None:
    """The "continue" action under a reply cut at the length limit."""
    return (t.messages, say(t.lang, "continue_prompt")) if t.data.value == CONTINUE else None


def example(t: Trigger) -> tuple[Messages, str]:
    """An example prompt on the empty chat is sent as the first message."""
    value = t.data.value
    return t.messages, value.get("text", "") if isinstance(value, dict) else text_of(value)


@dataclass(frozen=True)
class Settings:
    """What every reply needs besides the conversation."""

    model_id: str
    sampling: dict[str, Any]
    replies: dict[str, Any]
    lang: str | None
    receipt: str | None
    request: gr.Request
    profile: gr.OAuthProfile | None
    before: Messages | None = None
    """The conversation as it was before the event: given back if the reply fails."""
    draft: str | None = None
    """Text to put back in the message box if the reply fails (None leaves the box alone)."""
    clears_box: bool = False
    """The reply's text came from the message box, which empties as the reply starts."""


class _Stopped(Exception):
    pass


class ReplyStreams:
    """Replies as they stream, one at a time per visitor, each with its id and its stop flag.

    The id is issued here as the reply is admitted and travels in the reply's
    note: a Stop names it (so a Stop that arrives late cannot end the next
    reply), and a rating names it (so only a reply the server made is rated).
    """

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.registry = handlers.inference.registry
        self._stops: dict[str, tuple[str, asyncio.Event]] = {}

    def entry(self, choose: Pick, event: type[gr.EventData] = gr.EventData) -> Callable[..., AsyncIterator[Update]]:
        """The handler for one way into a reply; ``event`` is the data class of its Gradio event."""

        async def reply(
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
            data: gr.EventData,
            request: gr.Request,
            profile: gr.OAuthProfile | None,
        ) -> AsyncIterator[Update]:
            chosen = choose(Trigger(message or "", messages or [], data, lang))
            if chosen is None:
                yield SKIP
                return
            sampling = sampling_values(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
            draft = keep_typed(choose, message or "", chosen[1])
            settings = Settings(
                model_id, sampling, dict(replies or {}), lang, receipt, request, profile,
                messages or [], draft, clears_box=choose is typed,
            )  # fmt: skip
            async for update in self.stream(*chosen, settings):
                yield update

        # Gradio reads the annotation to know which event data to pass (EditData, SelectData ...).
        reply.__annotations__["data"] = event
        reply.__name__ = reply.__qualname__ = choose.__name__
        return reply

    def key(self, request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "anonymous"

    def running(self, request: gr.Request | None) -> bool:
        return self.key(request) in self._stops

    def cancel(self, request: gr.Request | None, rid: str | None = None) -> None:
        """Stop this visitor's reply (only reply ``rid`` when given): it leaves the queue or ends within one step."""
        running = self._stops.get(self.key(request))
        if running is not None and (rid is None or running[0] == rid):
            running[1].set()

    async def stop(self, messages: Messages | None, request: gr.Request) -> None:
        """The Stop button: ends the reply pending in the conversation it was pressed on, and no other.

        Never waits in Gradio's queue, as it only sets a flag. The page sends
        the conversation as it showed it; a Stop processed after that reply
        ended names an id that is no longer running, and changes nothing.
        """
        pending = [note_id(m) for m in messages or [] if (m.get("metadata") or {}).get("status") == "pending"]
        if pending and pending[-1]:
            self.cancel(request, pending[-1])

    def _release(self, key: str, stopped: asyncio.Event) -> None:
        # Only this reply's own claim: a late cleanup must never drop the next reply's stop event.
        if (claim := self._stops.get(key)) is not None and claim[1] is stopped:
            del self._stops[key]

    async def stream(self, shown: Messages, text: str, s: Settings) -> AsyncIterator[Update]:
        """Check, then stream the reply to ``text`` after ``shown``; on failure the draft stays in its box."""
        key = self.key(s.request)
        if key in self._stops:
            gr.Info(say(s.lang, "busy"), title=say(s.lang, "notice_title"))
            yield SKIP
            return
        shown = plain(shown)
        # Claimed before the checks, so a second Enter cannot slip in while they run.
        rid = secrets.token_urlsafe(12)
        stopped = asyncio.Event()
        self._stops[key] = (rid, stopped)
        tokens = self.handlers.stream_reply(
            s.request, s.profile, s.receipt, text, s.model_id, to_history(shown), s.sampling
        )
        try:
            _, admitted = await anext(tokens)  # every check runs before the first item
            assert isinstance(admitted, Admitted), admitted
        except (AppError, StopAsyncIteration) as exc:
            self._release(key, stopped)
            await tokens.aclose()
            if isinstance(exc, AppError):
                gr.Warning(pick(s.lang, exc.ja, exc.en), title=say(s.lang, "notice_title"))
            yield SKIP
            return
        except BaseException:
            self._release(key, stopped)
            raise
        try:
            async for update in self._admitted(shown, text, s, admitted.options, tokens, key, rid, stopped):
                yield update
        finally:
            self._release(key, stopped)  # also when the page goes away mid-reply

    async def _admitted(
        self,
        shown: Messages,
        text: str,
        s: Settings,
        options: SamplingOptions,
        tokens: AsyncGenerator[Any],
        key: str,
        rid: str,
        stopped: asyncio.Event,
    ) -> AsyncIterator[Update]:
        """An admitted reply: pending while it streams, then marked with how it ended."""
        spec = self.registry.get(s.model_id)
        record: dict[str, Any] = {
            "model_id": spec.id,
            "model_label": spec.label,
            "engine": engine_of(spec),
            "revision": None,
            "sampling": options.model_dump(),  # as admitted
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        user = {"role": "user", "content": text}
        generating = say(s.lang, "generating")
        box = "" if s.clears_box else gr.skip()
        yield [*shown, user, note(rid, generating, "", pending=True, log_line=spec.label)], box, gr.skip()
        reply, finished, dropped, was_stopped = "", None, 0, False
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with contextlib.aclosing(tokens):
                while True:
                    try:
                        _, item = await _next_or_stop(tokens, stopped)
                    except StopAsyncIteration:
                        break
                    except _Stopped:
                        was_stopped = True
                        break
                    if isinstance(item, Finished):
                        finished = item
                        continue
                    if isinstance(item, str):
                        reply += item
                        status = spec.label
                    else:
                        if isinstance(item, Trimmed):
                            dropped = item.dropped_turns
                            gr.Info(trimmed_text(s.lang, dropped), title=say(s.lang, "notice_title"))
                        status = status_text(s.lang, item)
                    pending = note(rid, generating, "", pending=True, log_line=status)
                    # A waiting status before the first token shows no empty reply yet.
                    parts = [{"role": "assistant", "content": reply}] if reply or isinstance(item, str) else []
                    yield [*shown, user, pending, *parts], gr.skip(), gr.skip()
        except Exception as exc:
            if isinstance(exc, AppError):
                gr.Warning(pick(s.lang, exc.ja, exc.en), title=say(s.lang, "notice_title"))
            else:
                log.exception("reply failed")
                gr.Warning(say(s.lang, "error_title"), title=say(s.lang, "notice_title"))
            self._release(key, stopped)
            # Nothing typed is lost: the conversation as it was, and the text back in the box.
            yield (
                plain(s.before) if s.before is not None else shown,
                gr.skip() if s.draft is None else s.draft,
                gr.skip(),
            )
            yield SETTLED
            return
        # Free before the last update: the visitor may send again as soon as Send shows.
        self._release(key, stopped)
        seconds = finished.seconds if finished and finished.seconds > 0 else loop.time() - t0
        outcome = _conclude(spec, record, finished, stopped=was_stopped, dropped=dropped, seconds=seconds)
        answer: dict[str, Any] = {"role": "assistant", "content": reply}
        if outcome.cut:
            answer["options"] = [{"label": say(s.lang, "continue"), "value": CONTINUE}]
        done = note(rid, note_title(s.lang, outcome), note_body(s.lang, record), pending=False, seconds=seconds)
        sent = [*shown, user, done, answer]
        # What was sent, signed for the caller it was made for: a rating must show the same conversation.
        caller = self.handlers.caller(s.request, s.profile, s.receipt)
        record["_signed"] = self.handlers.gate.identities.sign_reply(rid, caller.identity, to_history(sent))
        yield sent, gr.skip(), {**s.replies, rid: record}
        yield SETTLED


def _conclude(
    spec: ModelSpec, record: dict[str, Any], finished: Finished | None, *, stopped: bool, dropped: int, seconds: float
) -> Outcome:
    """How the reply ended, for its note; ``record`` gains the same facts for the export and the ratings."""
    if finished is not None:
        dropped = finished.dropped_turns or dropped
        record["revision"] = finished.revision
    outcome = Outcome(
        label=spec.label,
        seconds=seconds,
        tokens=finished.completion_tokens if finished else 0,
        stopped=stopped or (finished is not None and finished.finish_reason == "cancelled"),
        cut=finished is not None and finished.finish_reason in ("length", "shared"),
        shared=finished is not None and finished.finish_reason == "shared",
        dropped_turns=dropped,
    )
    record |= {
        "seconds": round(seconds, 3),
        "prompt_tokens": finished.prompt_tokens if finished else None,
        "completion_tokens": outcome.tokens or None,
        "finish_reason": "cancelled" if outcome.stopped else (finished.finish_reason if finished else None),
        "dropped_turns": dropped,
        "prompt_text": finished.prompt_text if finished else None,
    }
    return outcome


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


def keep_typed(choose: Pick, box: str, text: str) -> str | None:
    """What the message box gets back if an admitted reply fails: the sent message, or an edit's text
    when the box is empty (a draft in it is not overwritten); None leaves the box as it is."""
    if choose is typed:
        return box
    if choose is edited and not box.strip():
        return text
    return None
