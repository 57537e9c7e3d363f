"""The sidebar's 「サーバーに保存して他の端末でも使う」: a signed-in visitor's opt-in to keep conversations on the server.

Shown only to a visitor signed in with Hugging Face, and off unless the server
holds their list. Turning it on adds this browser's list to the server's;
from then on every change is made on the server and mirrored here
(``webapp.chat.kept_server``), and another device signed in to the same
account shows the same list. Turning it off deletes the server's copy; this
browser keeps its own.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from inference import InvalidInput, Registry
from inference.errors import AppError
from webapp.chat import history
from webapp.chat.kept_server import NotSignedIn, ServerKept
from webapp.errors import user_errors
from webapp.i18n import say


class ServerSync:
    """The opt-in's handlers: what the page shows on arrival, and turning the option on or off."""

    def __init__(self, server: ServerKept, registry: Registry) -> None:
        self.server = server
        self.registry = registry

    def load(
        self, store: object, account: object, lang: str, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[Any, ...]:
        """On arrival: the option for a signed-in visitor, and their server list in place of this browser's."""
        caller = self.server.account(request, profile)
        if caller is None:
            return gr.Checkbox(visible=False, value=False), gr.skip(), gr.skip()
        try:
            local = history.check_store(store, self.registry)
        except InvalidInput as exc:
            gr.Warning(f"{exc.ja}\n{exc.en}", title=say(lang, "notice_title"))
            return gr.Checkbox(visible=True), gr.skip(), gr.skip()
        held = self.server.read(caller)
        if held is None:
            return gr.Checkbox(visible=True, value=False), gr.skip(), ""
        if account != caller.identity:
            # The first time this browser meets the account: its own conversations join the server's.
            held = self.server.change(caller, lambda on_server: history.merge(on_server, local)[0]) or held
        return gr.Checkbox(visible=True, value=True), history.dump(held), caller.identity

    def toggle(
        self, on: object, store: object, lang: str, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[Any, ...]:
        """On: this browser's list goes to the server (joining what is there). Off: the server's copy is deleted."""
        try:
            caller = self.server.account(request, profile)
            if caller is None:
                raise NotSignedIn()
            if on is not True:
                self.server.stop(caller)
                gr.Info(say(lang, "history_server_off"), title=say(lang, "notice_title"))
                return False, gr.skip(), ""
            local = history.check_store(store, self.registry)
            merged = self.server.change(caller, lambda on_server: history.merge(on_server, local)[0], opt_in=True)
        except AppError as exc:
            # Japanese first, then English; the box goes back to what the server holds, nothing changed.
            gr.Warning(f"{exc.ja}\n{exc.en}", title=say(lang, "notice_title"))
            return on is not True, gr.skip(), gr.skip()
        gr.Info(say(lang, "history_server_on"), title=say(lang, "notice_title"))
        return True, history.dump(merged or []), caller.identity


def wire(view: Any, sync: ServerSync, *, lang: gr.Component, listed: Any) -> None:
    """The option's event; ``listed`` is the list's refresh, run after it (the handler and its inputs)."""
    private: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
    view.server.input(
        user_errors(sync.toggle),
        [view.server, view.store, lang],
        [view.server, view.store, view.account],
        api_name="page_history_server",
        **private,
    ).then(*listed, api_name="page_history_server_list", **private)
