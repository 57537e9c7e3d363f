"""What every event may be given, declared once per kind of input and checked before Gradio reads a request.

The page's own events (``page_*``) are as public as the named API: anyone can
call them through ``/queue/join`` with their ``fn_index``, or through
``/run``, ``/api`` and ``/call`` with their name. So the bounds do not live in
the handlers: each input component of each event gets a check from its kind
(a text box takes a string of bounded length, a dropdown one of its choices, a
slider a finite number in its range, a conversation what ``/chat``'s history
takes), and ``webapp.boundary.guard.Guard`` runs them on the raw request body of every
route, together with a rate per client address and a bound on each
concurrency group's waiting line. Gradio then never preprocesses, stores or
logs a value beyond them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components.api_component import Api

from inference.errors import AppError
from webapp.boundary.ratelimit import RateLimits, TooManyRequests
from webapp.gate.identity import Caller, Identities
from webapp.handlers import HISTORY_CHARS_PER_CONTEXT_TOKEN, MAX_TURN_CHARS, MAX_TURNS, HistoryTooLong

log = logging.getLogger(__name__)

TEXT_CHARS = MAX_TURN_CHARS
"""Any text box: the handler's own limits (a message's, a form field's) are below this and say so in words."""
SMALL_JSON_CHARS = 4096
"""A value the page keeps for the server (a receipt, an admin grant, a state placeholder)."""
NOTE_CHARS = 1500
"""One note before a reply (its title, settings and status): a few hundred characters when the server wrote it."""
EVENT_DATA_CHARS = TEXT_CHARS + 2000
"""An event's data: an index and a value (an edited message at most)."""
MAX_DEPTH = 8
MAX_NODES = 4 * MAX_TURNS * 8


class Refused(AppError):
    """A request beyond its event's bounds; ``kind`` names the bound for the log (never the value)."""

    def __init__(self, kind: str, ja: str | None = None, en: str | None = None, *, status: int = 422) -> None:
        super().__init__(
            ja or f"入力が不正です({kind})。ページを再読み込みしてください。",
            en or f"Invalid input ({kind}). Reload the page.",
        )
        self.kind = kind
        self.status = status


class Busy(Refused):
    def __init__(self) -> None:
        super().__init__(
            "busy",
            "ただいま混み合っています。少し待ってからもう一度お試しください。",
            "The server is busy. Please try again in a moment.",
            status=503,
        )


Check = Callable[[Any], None]


def _walk(
    value: Any,
    *,
    max_chars: int,
    depth: int = 0,
    budget: list[int] | None = None,
    strict: bool = True,
    max_depth: int = MAX_DEPTH,
) -> int:
    """The characters of every string in a JSON value; refuses deep or wide values, and (``strict``)
    non-finite numbers and unencodable text. ``budget`` holds the nodes still allowed."""
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0 or depth > max_depth:
        raise Refused("too-deep")
    if not strict:
        pass
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("unencodable-text") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise Refused("not-finite")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        raise Refused("number-out-of-range")
    if isinstance(value, str):
        return len(value)
    total = 0
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        if isinstance(item, tuple):
            total += _walk(item[0], max_chars=max_chars, depth=depth + 1, budget=budget, strict=strict,
                           max_depth=max_depth)  # fmt: skip
            item = item[1]
        total += _walk(item, max_chars=max_chars, depth=depth + 1, budget=budget, strict=strict, max_depth=max_depth)
        if total > max_chars:
            raise Refused("too-large")
    return total


def json_value(max_chars: int, *, strict: bool = True, depth: int = MAX_DEPTH, nodes: int = MAX_NODES) -> Check:
    def check(value: Any) -> None:
        if _walk(value, max_chars=max_chars, strict=strict, max_depth=depth, budget=[nodes]) > max_chars:
            raise Refused("too-large")

    return check


def text(max_chars: int) -> Check:
    def check(value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise Refused("not-text")
        if len(value) > max_chars:
            raise Refused(
                "text-too-long",
                f"入力が長すぎます(上限 {max_chars} 文字)。",
                f"The input is too long (at most {max_chars} characters).",
            )
        _walk(value, max_chars=max_chars)

    return check


def choice(values: list[Any]) -> Check:
    allowed = [v for v in values if isinstance(v, str | int | float)]

    def check(value: Any) -> None:
        # By equality and type: True is not 1 here, as it would be for Python's ``in``.
        if not any(type(value) is type(v) and value == v for v in allowed):
            raise Refused("not-a-choice")

    return check


def number(lo: float, hi: float) -> Check:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused("not-a-number")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise Refused(
                "number-out-of-range", f"値は {lo}〜{hi} の範囲にしてください。", f"Use a value in [{lo}, {hi}]."
            )

    return check


def flag(value: Any) -> None:
    if not isinstance(value, bool):
        raise Refused("not-a-flag")


_MESSAGE_KEYS = frozenset({"role", "metadata", "content", "options"})
_META = {"title": str, "id": str | int, "parent_id": str | int, "log": str, "duration": int | float, "status": str}


def _message(message: Any) -> bool:
    """One chat message exactly as the page sends it: text parts, a note's metadata, a reply's options."""
    if not isinstance(message, dict) or not set(message) <= _MESSAGE_KEYS:
        return False
    if message.get("role") not in ("user", "assistant"):
        return False
    content = message.get("content")
    if not isinstance(content, list) or not all(
        isinstance(p, dict)
        and p.get("type") == "text"
        and isinstance(p.get("text"), str)
        and set(p) <= {"type", "text"}
        for p in content
    ):
        return False
    meta = message.get("metadata")
    if meta is not None and not (
        isinstance(meta, dict)
        and all(k in _META and isinstance(v, _META[k]) and not isinstance(v, bool) for k, v in meta.items())
        and meta.get("status") in (None, "pending", "done")
    ):
        return False
    options = message.get("options")
    return options is None or (
        isinstance(options, list)
        and len(options) <= 4
        and all(
            isinstance(o, dict) and set(o) <= {"value", "label"} and isinstance(o.get("value"), str) for o in options
        )
    )


def conversation(history_chars: int) -> Check:
    """The chatbot's value: the turns bounded as ``/chat``'s history is, plus the server's notes between them."""

    def check(value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            raise Refused("not-a-conversation")
        turns = notes = total = 0
        for message in value:
            if not _message(message):
                raise Refused("not-a-conversation")
            if (message.get("metadata") or {}).get("title"):
                notes += 1
                _walk(message, max_chars=NOTE_CHARS)
            else:
                turns += 1
                total += _walk(message, max_chars=TEXT_CHARS + 200)
            if turns > MAX_TURNS or notes > MAX_TURNS or total > history_chars:
                raise _too_long(total, history_chars)

    return check


def api_value(history_chars: int) -> Check:
    """A named endpoint's parameter: its handler validates the value and says what is wrong with it (a NaN
    temperature, a lone surrogate); here only its size, the largest being a history."""
    limit = history_chars + MAX_TURNS * 200

    def check(value: Any) -> None:
        total = _walk(value, max_chars=2**62, strict=False)
        if total > limit:
            raise _too_long(total, limit) if isinstance(value, list) else Refused("too-large")

    return check


def api_text(max_chars: int) -> Check:
    """A named endpoint's scalar parameter: its handler says what is wrong with the value; here only its length."""

    def check(value: Any) -> None:
        if isinstance(value, str) and len(value) > max_chars:
            raise Refused(
                "text-too-long",
                f"入力が長すぎます(上限 {max_chars} 文字)。",
                f"The input is too long (at most {max_chars} characters).",
            )
        _walk(value, max_chars=max_chars, strict=False)

    return check


def _too_long(chars: int, limit: int) -> Refused:
    said = HistoryTooLong(chars, limit)
    return Refused("conversation-too-long", said.ja, said.en)


def for_component(block: Any, *, history_chars: int) -> Check:
    """The bound of one input component: its own (``door_bound``, set where the page builds it), else from its kind."""
    if (own := getattr(block, "door_bound", None)) is not None:
        return own
    if isinstance(block, gr.Chatbot):
        return conversation(history_chars)
    if isinstance(block, gr.Textbox):
        return text(TEXT_CHARS)
    if isinstance(block, gr.Dropdown | gr.Radio) and not getattr(block, "allow_custom_value", False):
        return choice([value for _, value in block.choices])
    if isinstance(block, gr.Slider):
        return number(block.minimum, block.maximum)
    if isinstance(block, gr.Checkbox):
        return flag
    if isinstance(block, Api):
        # A parameter typed as a scalar (a message, a receipt, a token) is at most a text box's length.
        schema = json.dumps(block.api_info())
        return api_value(history_chars) if '"array"' in schema or '"object"' in schema else api_text(TEXT_CHARS)
    return json_value(SMALL_JSON_CHARS)


@dataclass(frozen=True)
class Event:
    """One registered event: its name, its group, and a check per input."""

    name: str | None
    group: str
    checks: tuple[Check, ...]
    api_positions: tuple[int, ...]
    """The inputs a ``/call`` body lists (Gradio fills the others, such as states, itself)."""


class Doors:
    """Every event of one app with its bounds, and the per-address rate every route is held to."""

    def __init__(
        self, blocks: gr.Blocks, *, contexts: list[int], limits: RateLimits, identities: Identities, max_waiting: int
    ) -> None:
        # The longest history ``/chat`` takes for any offered model.
        history_chars = max(contexts, default=4096) * HISTORY_CHARS_PER_CONTEXT_TOKEN
        self.blocks = blocks
        self.limits = limits
        self.identities = identities
        self.max_waiting = max_waiting
        self.history_chars = history_chars
        self.events: dict[int, Event] = {}
        self.by_name: dict[str, int] = {}
        for fn_id, fn in blocks.fns.items():
            inputs = list(fn.inputs)
            self.events[fn_id] = Event(
                fn.api_name,
                str(fn.concurrency_id),
                tuple(for_component(b, history_chars=history_chars) for b in inputs),
                tuple(i for i, b in enumerate(inputs) if not b.skip_api),
            )
            if fn.api_name:
                self.by_name[fn.api_name] = fn_id

    def count(self, headers: list[tuple[bytes, bytes]], peer: str | None) -> None:
        """Count one event from this client address; ``TooManyRequests`` when over its rate."""
        address = self.identities.address_hash(headers, peer)
        self.limits.check("event", Caller(None, None, None, address, None))

    def check(self, route: str, name: str | None, body: Any) -> None:
        """Refuse ``body`` unless its event exists and every value is within that event's bounds."""
        if not isinstance(body, dict):
            raise Refused("not-an-object")
        fn_index = body.get("fn_index")
        if fn_index is not None:
            if isinstance(fn_index, bool) or not isinstance(fn_index, int) or fn_index not in self.events:
                raise Refused("unknown-event", status=404)
        elif name is not None and name in self.by_name:
            fn_index = self.by_name[name]
        else:
            raise Refused("unknown-event", status=404)
        event = self.events[fn_index]
        data = body.get("data")
        if route == "call/v2":
            if not isinstance(data, dict):
                raise Refused("wrong-inputs")
            json_value(len(event.checks) * TEXT_CHARS + self.history_chars)(data)
        else:
            if not isinstance(data, list):
                raise Refused("wrong-inputs")
            # As Gradio reads them: a direct call may leave out trailing parameters (they take their
            # defaults), and ``/call`` may list only the inputs the API shows.
            positions: tuple[int, ...] = tuple(range(len(data)))
            if route == "call" and len(data) == len(event.api_positions) != len(event.checks):
                positions = event.api_positions
            if len(data) > len(event.checks) or (route == "queue/join" and len(data) != len(event.checks)):
                raise Refused("wrong-inputs")
            for position, value in zip(positions, data, strict=True):
                event.checks[position](value)
        for key in ("event_data", "trigger_id", "event_id", "oauth_token"):
            if key in body:
                json_value(EVENT_DATA_CHARS)(body[key])
        if body.get("batched") not in (None, False) or body.get("simple_format") not in (None, False, True):
            raise Refused("wrong-inputs")
        self._room_for(event)

    def _room_for(self, event: Event) -> None:
        """A bounded line per concurrency group: a flood of one event never makes an unbounded queue."""
        queue = getattr(self.blocks, "_queue", None)
        line = getattr(queue, "event_queue_per_concurrency_id", {}).get(event.group)
        if line is not None and len(line.queue) >= self.max_waiting:
            raise Busy()


def refusal_body(exc: AppError, status: int) -> bytes:
    """The refusal as Gradio's clients read it, Japanese first, then English.

    Bad input is answered as Gradio answers a failed validator (422, a list of
    parameter messages): the page shows it, ``gradio_client`` raises it as a
    ``ValidationError`` with the message. Anything else carries a ``detail``.
    """
    if status == 422:
        detail: Any = [{"__type__": "validate", "is_valid": False, "message": str(exc), "parameter_name": "input"}]
    else:
        detail = str(exc)
    return json.dumps({"detail": detail}, ensure_ascii=False).encode()


def log_refusal(exc: AppError) -> None:
    """One line naming the kind; never the value."""
    kind = exc.kind if isinstance(exc, Refused) else "rate" if isinstance(exc, TooManyRequests) else "other"
    log.info("refused at the door: %s", kind)
