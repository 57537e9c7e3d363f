"""Kept conversations on the server, for a signed-in visitor who opted in (``db.kept``); off by default.

Only a Hugging Face account has a server copy: its identity is the account
checked by OAuth, the same on every device, so the list follows it. An
anonymous visitor's identity lives in one browser's receipt, so a server copy
would follow no one: they never get one, whatever they send.

While an account keeps its list here, the server's copy is the one that
counts and the browser's is a mirror of it: every change is made to the
server's list (in one transaction, so two devices' changes do not undo each
other) and the browser gets the result. So a conversation deleted on one
device does not come back from another device's older mirror.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gradio as gr
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import kept
from db.engine import DatabaseUnavailable, checkpoint
from inference import Registry
from inference.errors import AppError
from webapp.chat import history
from webapp.chat.history import Saved
from webapp.errors import ConsentRequired
from webapp.gate.identity import Caller
from webapp.handlers import Handlers

log = logging.getLogger(__name__)

Change = Callable[[list[Saved]], list[Saved]]


class NotSignedIn(AppError):
    """Keeping conversations on the server needs a Hugging Face account."""

    def __init__(self) -> None:
        super().__init__(
            "サーバーへの保存には Hugging Face でのサインインが必要です。",
            "Keeping conversations on the server needs signing in with Hugging Face.",
        )


class NotKept(AppError):
    """The database could not be read or written; the browser's list is unchanged."""

    def __init__(self) -> None:
        super().__init__(
            "サーバーの会話を読み書きできませんでした。しばらくしてからもう一度お試しください。",
            "The conversations on the server could not be read or written. Please try again later.",
        )


@contextmanager
def _database() -> Iterator[None]:
    try:
        yield
    except (SQLAlchemyError, DatabaseUnavailable, OSError) as exc:
        log.warning("kept conversations: database error %s", type(exc).__name__)
        raise NotKept() from None
    except kept.TooMuch:
        raise history.BadStore() from None


class ServerKept:
    """Reads and changes a signed-in account's server list; each write counts against the caller's limits."""

    def __init__(self, handlers: Handlers, sessions: sessionmaker[Session], registry: Registry) -> None:
        self.handlers = handlers
        self.sessions = sessions
        self.registry = registry

    def account(self, request: gr.Request | None, profile: gr.OAuthProfile | None) -> Caller | None:
        """The caller when signed in with Hugging Face; None for anyone else (no receipt is read)."""
        caller = self.handlers.caller(request, profile, None)
        return caller if caller.username and caller.identity else None

    def _check(self, stored: list[dict[str, object]]) -> list[Saved]:
        # What the table holds was checked on the way in; checked again on the way out, as the offered
        # models may have changed since (a reply's record of a model no longer offered is left out).
        return history.check_store(stored, self.registry)

    def read(self, caller: Caller) -> list[Saved] | None:
        """The account's list, or None when it keeps none on the server."""
        assert caller.identity is not None
        with _database(), self.sessions() as session:
            stored = kept.read(session, caller.identity)
        return None if stored is None else self._check(stored)

    def change(self, caller: Caller, change: Change, *, opt_in: bool = False) -> list[Saved] | None:
        """Apply ``change`` to the account's list and keep the result; None (and nothing written) when the
        account keeps none on the server, unless ``opt_in``, which starts one. Raises ``ConsentRequired`` for
        an opt-in without consent, ``TooManyRequests`` over the caller's limits."""
        assert caller.identity is not None
        if opt_in and not self.handlers.gate.has_consent(caller):
            raise ConsentRequired()
        self.handlers.limits.check("kept", caller)
        with _database(), self.sessions.begin() as session:
            if not kept.lock(session, caller.identity) and not opt_in:
                return None
            stored = kept.read(session, caller.identity)
            chats = change(self._check(stored or []))
            kept.write(session, caller.identity, history.dump(chats))
        return chats

    def stop(self, caller: Caller) -> int | None:
        """Opt out: delete the account's server list; how many conversations it held (None: it had none)."""
        assert caller.identity is not None
        self.handlers.limits.check("kept", caller)
        with _database():
            with self.sessions.begin() as session:
                count = kept.remove(session, caller.identity)
            # Deleted bytes leave SQLite's WAL too, as after an erasure.
            checkpoint(self.sessions.kw["bind"])
        return count
