"""The operators' view of the audit log, for administrators only (checked on the server)."""

from __future__ import annotations

import hmac
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import audit, export
from db.models import Event, EventKind
from inference import InvalidInput
from webapp.errors import NotAdmin
from webapp.identity import Identities

EVENT_COLUMNS = ["seq", "time (UTC)", "kind", "identity", "name", "email", "affiliation", "purpose", "detail"]


class Admin:
    """Administrator checks and what the Admin tab and the admin endpoints show."""

    def __init__(
        self, sessions: sessionmaker[Session], identities: Identities, *, users: frozenset[str], token: str | None
    ) -> None:
        self.sessions = sessions
        self.identities = identities
        self.users = users
        self._token = token
        # One file, rewritten on each refresh: Gradio copies what it serves into its own cache.
        self._report = Path(tempfile.mkdtemp(prefix="llmjp-export-")) / "access-report.csv"

    def is_admin(self, profile: gr.OAuthProfile | None, token: str | None) -> bool:
        """A listed Hugging Face user, or the holder of the admin token."""
        username = getattr(profile, "username", None) if profile is not None else None
        if username and username in self.users:
            return True
        return bool(self._token and token and hmac.compare_digest(self._token.encode(), token.encode()))

    def require(self, profile: gr.OAuthProfile | None, token: str | None) -> None:
        """Raise ``NotAdmin`` unless the caller is an administrator."""
        if not self.is_admin(profile, token):
            raise NotAdmin()

    # -- what administrators see ---------------------------------------------

    def per_day(self, days: int = 90) -> pd.DataFrame:
        """Acceptances per UTC day over the last ``days`` days."""
        since = datetime.now(UTC) - timedelta(days=days)
        with self.sessions() as session:
            times = session.scalars(
                select(Event.created_at).where(Event.kind == EventKind.ACCEPTED.value, Event.created_at >= since)
            ).all()
        counts = Counter(t.date().isoformat() for t in times)
        return pd.DataFrame({"day": list(counts), "acceptances": list(counts.values())})

    def latest(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest events, newest first, as plain values."""
        with self.sessions() as session:
            events = audit.latest(session, limit)
        return [
            {
                "seq": e.seq,
                "time (UTC)": e.created_at.isoformat(timespec="seconds"),
                "kind": e.kind,
                "identity": e.identity,
                "name": e.name or "",
                "email": e.email or "",
                "affiliation": e.affiliation or "",
                "purpose": e.purpose or "",
                "detail": " ".join(x for x in (e.terms_id, e.licence, e.model_id, e.reason) if x),
            }
            for e in events
        ]

    def report(self, fmt: str, since: str = "") -> str:
        """The access report as CSV or JSON text."""
        if fmt not in ("csv", "json"):
            raise InvalidInput("format は csv か json です。", "format must be csv or json.")
        try:
            start = export.parse_since(since) if since else None
        except ValueError:
            raise InvalidInput(
                "since は 2026-11-01 の形式の日付です。", "since must be a date like 2026-11-01."
            ) from None
        with self.sessions() as session:
            return export.render(session, fmt, start)

    # -- handlers -------------------------------------------------------------

    def admin_events(
        self,
        admin_token: str = "",
        limit: int = 50,
        profile: gr.OAuthProfile | None = None,
    ) -> list[dict[str, Any]]:
        """The latest audit events (administrators only)."""
        self.require(profile, admin_token)
        return self.latest(max(1, min(int(limit), 1000)))

    def admin_export(
        self,
        admin_token: str = "",
        format: str = "csv",
        since: str = "",
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """The access report as CSV or JSON text (administrators only)."""
        self.require(profile, admin_token)
        return self.report(format, since)

    def dashboard(
        self, admin_token: str | None, profile: gr.OAuthProfile | None
    ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """The Admin tab's plot, table and a CSV download."""
        self.require(profile, admin_token)
        events = pd.DataFrame(self.latest(), columns=EVENT_COLUMNS)
        self._report.write_text(self.report("csv"), encoding="utf-8")
        return self.per_day(), events, str(self._report)

    def sign_in(self, admin_token: str, profile: gr.OAuthProfile | None) -> tuple[str, Any]:
        """Check an admin token typed on the page; keeps it in server-side session state."""
        self.require(profile, admin_token)
        return admin_token, gr.Tab(visible=True)
