"""「比較」: two models answer the same message at once, side by side; the visitor votes; the admin tab ranks.

Both replies go through ``Handlers.stream_reply``, the one way in of the page
and /chat: the same gate, the same checks, and each counts against the
caller's limits. The pair is chosen by the visitor, or drawn at random and
named only after the vote. What a vote stores is taken from the server's own
record of the round, never from the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from db import arena
from inference import AppError, InvalidInput, SamplingOptions
from inference.progress import Finished
from webapp.admin import arena_rank
from webapp.admin.audit import Admin
from webapp.chat import history
from webapp.chat.messages import Messages, note, note_id, short_name, to_history
from webapp.downloads import download_link
from webapp.errors import user_errors
from webapp.handlers import HISTORY_CHARS_PER_CONTEXT_TOKEN, Handlers, sampling_values
from webapp.i18n import pick, say, t
from webapp.ui.conversation import Conversation

SIDES = ("a", "b")
VERDICTS = {"a": arena.Verdict.A, "b": arena.Verdict.B, "tie": arena.Verdict.TIE, "both_bad": arena.Verdict.BOTH_BAD}
# Send becomes Stop while either column shows a pending note (its spinner), as in the chat (ui.page.CSS).
CSS = """
body:has(#compare .loading-spinner) #compare-send, body:not(:has(#compare .loading-spinner)) #compare-stop {
  display: none !important; }
"""
RANK_COLUMNS = ["rank", "model_id", "score", "ci_low", "ci_high", "win_rate", "votes", "wins", "losses", "ties",
                "both_bad"]  # fmt: skip


@dataclass
class CompareView:
    model_a: gr.Dropdown
    model_b: gr.Dropdown
    blind: gr.Checkbox
    chat_a: gr.Chatbot
    chat_b: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    votes: list[gr.Button]
    share: gr.Checkbox
    result: gr.Markdown
    duel: gr.State


def render(registry: Any, availability: Any) -> CompareView:
    """The compare panel, folded under the chat."""
    specs = list(registry.specs.values())
    choices = availability.choices(specs) if availability else [(spec.label, spec.id) for spec in specs]
    default = registry.default_id
    second = next((v for _, v in choices if v != default), default)
    with gr.Accordion(t("compare"), open=False, elem_id="compare"):
        gr.Markdown(t("compare_help"))
        with gr.Row():
            model_a = gr.Dropdown(choices=choices, value=default, label=t("compare_model_a"), elem_id="compare-model-a")
            model_b = gr.Dropdown(choices=choices, value=second, label=t("compare_model_b"), elem_id="compare-model-b")
        blind = gr.Checkbox(label=t("compare_blind"), value=False, elem_id="compare-blind")
        with gr.Row(equal_height=True):
            chat_a = Conversation(label="A", height=360, buttons=["copy"], elem_id="compare-a")
            chat_b = Conversation(label="B", height=360, buttons=["copy"], elem_id="compare-b")
        with gr.Row():
            message = gr.Textbox(label=t("message"), show_label=False, placeholder=t("message_placeholder"), scale=4,
                                 max_lines=6, elem_id="compare-message")  # fmt: skip
            send = gr.Button(t("compare_send"), variant="primary", scale=1, min_width=0, elem_id="compare-send")
            stop = gr.Button(t("stop"), variant="stop", scale=1, min_width=0, elem_id="compare-stop")
        with gr.Row():
            votes = [
                gr.Button(t(f"compare_vote_{key}"), size="sm", min_width=0, elem_id=f"compare-vote-{key}")
                for key in VERDICTS
            ]
        share = gr.Checkbox(label=t("compare_share"), value=False, elem_id="compare-share")
        result = gr.Markdown("", elem_id="compare-result")
    return CompareView(
        model_a,
        model_b,
        blind,
        chat_a,
        chat_b,
        message,
        send,
        stop,
        votes,
        share,
        result,
        gr.State(None),
    )


def _notice(lang: str | None, exc: AppError) -> None:
    gr.Warning(pick(lang, exc.ja, exc.en), title=say(lang, "notice_title"))


def _key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


class Compare:
    """The compare mode's handlers; a round's facts live in the session's state, made here."""

    def __init__(self, handlers: Handlers, sessions: sessionmaker[Session]) -> None:
        self.handlers = handlers
        self.sessions = sessions
        self.registry = handlers.inference.registry
        self._stops: dict[str, tuple[str, asyncio.Event]] = {}
        """Rounds now streaming, by id: whose they are, and the flag their Stop sets."""

    def _pair(self, a: object, b: object, blind: bool, duel: dict[str, Any] | None) -> tuple[str, str]:
        if blind:
            if duel and duel.get("blind") and not duel.get("voted"):
                return duel["a"], duel["b"]  # the same hidden pair until the vote
            ready = [
                s.id
                for s in self.registry.specs.values()
                if not (self.handlers.availability and self.handlers.availability.reason(s))
            ]
            if len(ready) < 2:
                raise InvalidInput("比較できるモデルが 2 つありません。", "There are not two models to compare.")
            first, second = random.sample(ready, 2)
            return first, second
        if a not in self.registry.specs or b not in self.registry.specs:
            raise InvalidInput("比較するモデルを選んでください。", "Choose the models to compare.")
        if a == b:
            raise InvalidInput("違う 2 つのモデルを選んでください。", "Choose two different models.")
        return str(a), str(b)

    async def ask(
        self, message: object, a: object, b: object, blind: object, chat_a: object, chat_b: object,
        duel: dict[str, Any] | None, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
        max_new_tokens: int, seed: object, lang: str, receipt: str | None, request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> Any:  # fmt: skip
        """Send one message to both models; the two replies stream side by side."""
        skip = (gr.skip(),) * 7
        try:
            pair = self._pair(a, b, blind is True, duel)
            same = bool(duel and (duel["a"], duel["b"]) == pair and not duel.get("voted"))
            limit = min(self.registry.get(m).context for m in pair) * HISTORY_CHARS_PER_CONTEXT_TOKEN
            shown = [history.check_messages(c if same else [], max_chars=limit) for c in (chat_a, chat_b)]
            if not isinstance(message, str):
                raise InvalidInput("メッセージを入力してください。", "Please type a message.")
            sampling = sampling_values(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed)
        except AppError as exc:
            _notice(lang, exc)
            yield skip
            return
        streams = [
            self.handlers.stream_reply(request, profile, receipt, message, m, to_history(s), sampling)
            for m, s in zip(pair, shown, strict=True)
        ]
        try:
            for stream in streams:  # every check for both, before any token and before the box empties
                await anext(stream)
        except (AppError, StopAsyncIteration) as exc:
            for stream in streams:
                await stream.aclose()
            if isinstance(exc, AppError):
                _notice(lang, exc)
            yield skip
            return
        blind_now = blind is True
        labels = ("A", "B") if blind_now else tuple(short_name(self.registry.get(m).label) for m in pair)
        round_: dict[str, Any] = {"a": pair[0], "b": pair[1], "blind": blind_now, "voted": False, "done": False,
                  "sampling": SamplingOptions.parse(**sampling).model_dump(), "revision": {}}  # fmt: skip
        # The round's id travels in each column's pending note: a Stop names it, so a Stop that arrives
        # late cannot end the next round.
        rid, stopped = secrets.token_urlsafe(12), asyncio.Event()
        self._stops[rid] = (_key(request), stopped)
        texts, ended = ["", ""], [False, False]
        user = {"role": "user", "content": message}
        generating, halted = say(lang, "generating"), False

        def view(box: Any = None) -> tuple[Any, ...]:
            sides = []
            for i, (past, text, label) in enumerate(zip(shown, texts, labels, strict=True)):
                turns: list[Any] = [*past, user]
                if not ended[i]:
                    # No model name in the note: a drawn pair stays unnamed until the vote.
                    turns.append(note(rid, say(lang, "stopped") if halted else generating, "", pending=not halted))
                if text:
                    turns.append({"role": "assistant", "content": text})
                sides.append(gr.Chatbot(turns, label=label))
            # The result line: emptied as a round starts; once both replies are in (or stopped), what next.
            said: Any = gr.skip()
            if box == "":
                said = ""
            elif halted:
                said = say(lang, "compare_stopped_vote" if round_["done"] else "compare_stopped")
            elif all(ended):
                said = say(lang, "compare_vote_now") if round_["done"] else ""
            return (*sides, gr.skip() if box is None else box, round_, said, gr.skip(), gr.skip())

        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for _, item in streams[i]:
                    await queue.put((i, item))
            except Exception as exc:  # told to the visitor below
                await queue.put((i, exc))
            finally:
                await queue.put((i, None))

        async def stopper() -> None:
            await stopped.wait()
            await queue.put((-1, None))

        tasks = [asyncio.create_task(pump(i)) for i in range(2)]
        tasks.append(asyncio.create_task(stopper()))
        failed = False
        try:
            yield view("")  # admitted: the box empties, the last round's result goes
            while not all(ended):
                i, item = await queue.get()
                if i < 0:
                    halted = True
                    break
                if item is None:
                    ended[i] = True
                    if not all(ended):
                        yield view()
                elif isinstance(item, Exception):
                    failed = True
                    _notice(lang, item) if isinstance(item, AppError) else gr.Warning(say(lang, "error_title"))
                elif isinstance(item, Finished):
                    round_["revision"][SIDES[i]] = item.revision
                elif isinstance(item, str):
                    texts[i] += item
                    yield view()
        finally:
            self._stops.pop(rid, None)
            # Stopped or gone: both replies end, each giving back its place in the lane and the caller's slot.
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            for stream in streams:  # one whose task never began still holds its slot
                await stream.aclose()
        # A stopped round keeps what each column had; the visitor may still vote on it, and nothing is
        # stored unless they do.
        round_["done"] = not failed and all(texts)
        # Nothing typed is lost: a round that failed puts the message back in the box.
        yield view(message if failed else None)
        # Gradio sends a generator's last value once more as the event ends, possibly after the vote: so the
        # last value changes nothing (the vote's naming of the models stays).
        yield skip

    async def stop(self, chat_a: Messages | None, chat_b: Messages | None, request: gr.Request) -> None:
        """The Stop button: ends the round pending in the columns it was pressed on, and no other.

        Never waits in Gradio's queue, as it only sets a flag; a round that has already ended is not
        found, and a round of another visitor is not theirs to stop.
        """
        for messages in (chat_a, chat_b):
            for m in messages if isinstance(messages, list) else []:
                if isinstance(m, dict) and (m.get("metadata") or {}).get("status") == "pending":
                    running = self._stops.get(note_id(m) or "")
                    if running is not None and running[0] == _key(request):
                        running[1].set()

    def vote(
        self, verdict: str, duel: dict[str, Any] | None, share: bool, chat_a: object, chat_b: object, lang: str,
        request: gr.Request,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Store the visitor's verdict with both models, revisions and sampling; then name the models."""
        skip = (gr.skip(),) * 4
        if verdict not in VERDICTS or not duel or not duel.get("done") or duel.get("voted"):
            gr.Info(say(lang, "compare_nothing"), title=say(lang, "notice_title"))
            return skip
        self.handlers.limits.check("chat", self.handlers.caller(request, None, None))
        conversation = None
        if share is True:
            try:
                conversation = {
                    side: history.check_messages(chat) for side, chat in zip(SIDES, (chat_a, chat_b), strict=True)
                }
            except InvalidInput as exc:
                gr.Warning(f"{exc.ja}\n{exc.en}", title=say(lang, "notice_title"))
                return skip
            conversation = {side: to_history(c) for side, c in conversation.items()}
        with self.sessions.begin() as session:
            arena.record(
                session,
                model_a=duel["a"],
                model_b=duel["b"],
                revision_a=duel["revision"].get("a"),
                revision_b=duel["revision"].get("b"),
                sampling=duel["sampling"],
                verdict=VERDICTS[verdict],
                blind=bool(duel["blind"]),
                conversation=conversation,
            )
        names = [short_name(self.registry.get(duel[s]).label) for s in SIDES]
        told = say(lang, "compare_thanks").format(a=names[0], b=names[1])
        return {**duel, "voted": True}, told, gr.Chatbot(label=f"A: {names[0]}"), gr.Chatbot(label=f"B: {names[1]}")


class ArenaBoard:
    """The compare votes on the Admin tab: win rates and the ranking, exportable; administrators only."""

    def __init__(self, sessions: sessionmaker[Session], admin: Admin) -> None:
        self.sessions = sessions
        self.admin = admin

    def _rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self.sessions() as session:
            votes = arena.rows(session)
        ranked = arena_rank.table(arena_rank.rank([(v["model_a"], v["model_b"], v["verdict"]) for v in votes]))
        return votes, ranked

    def dashboard(self, credential: str | None, profile: gr.OAuthProfile | None) -> tuple[pd.DataFrame, str]:
        """The ranking, and downloads of it and of every vote (never written to disk)."""
        self.admin.require(profile, credential)
        self.admin.record(profile, credential, "dashboard: compare votes")  # shared conversations are personal
        votes, ranked = self._rows()
        frame = pd.DataFrame(ranked, columns=RANK_COLUMNS)
        links = " ".join(
            [
                download_link(frame.to_csv(index=False), "arena-ranking.csv", "text/csv"),
                download_link(arena.to_csv(votes), "arena-votes.csv", "text/csv"),
            ]
        )
        return frame, links

    def admin_arena(self, admin_token: str = "", profile: gr.OAuthProfile | None = None) -> dict[str, Any]:
        """The compare mode's ranking and every vote (administrators only)."""
        self.admin.require(profile, admin_token)
        self.admin.record(profile, admin_token, "admin_arena")
        votes, ranked = self._rows()
        return {"ranking": ranked, "votes": votes}


def wire(view: CompareView, compare: Compare, *, chat: Any, lang: gr.Component, receipt: gr.Component) -> None:
    """The compare panel's events."""
    private: dict[str, Any] = {"api_visibility": "private"}
    outputs = [view.chat_a, view.chat_b, view.message, view.duel, view.result, view.model_a, view.model_b]
    inputs = [
        view.message, view.model_a, view.model_b, view.blind, view.chat_a, view.chat_b, view.duel,
        *chat.sliders, chat.seed, lang, receipt,
    ]  # fmt: skip
    gr.on(
        [view.send.click, view.message.submit],
        user_errors(compare.ask),
        inputs,
        outputs,
        api_name="page_compare",
        concurrency_limit=None,
        show_progress="hidden",
        **private,
    )
    # As the chat's Stop: never queued, only sets a flag; "multiple", so a click is never dropped while the
    # last one's event is still on its way back. The columns as shown name the round it was pressed for.
    view.stop.click(
        compare.stop,
        [view.chat_a, view.chat_b],
        None,
        api_name="page_compare_stop",
        concurrency_limit=None,
        trigger_mode="multiple",
        **private,
    )
    for key, button in zip(VERDICTS, view.votes, strict=True):

        def verdict(
            duel: dict[str, Any] | None, share: bool, a: object, b: object, lang_value: str, request: gr.Request,
            key: str = key,
        ) -> tuple[Any, ...]:  # fmt: skip
            return compare.vote(key, duel, share, a, b, lang_value, request)

        button.click(
            user_errors(verdict),
            [view.duel, view.share, view.chat_a, view.chat_b, lang],
            [view.duel, view.result, view.chat_a, view.chat_b],
            api_name=f"page_compare_vote_{key}",
            show_progress="hidden",
            **private,
        )
