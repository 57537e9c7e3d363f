"""The operators' view of the audit log, for administrators only (checked on the server)."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import gradio as gr
import pandas as pd
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import audit, export
from db.engine import DatabaseUnavailable, checkpoint
from db.models import Event, EventKind
from inference import InvalidInput
from webapp.downloads import download_link
from webapp.errors import AuditUnavailable, NotAdmin
from webapp.gate.identity import IDENTITY

EVENT_COLUMNS = ["seq", "time (UTC)", "kind", "identity", "name", "email", "affiliation", "purpose", "detail"]


@contextmanager
def _audit_database() -> Iterator[None]:
    """Any database failure behind an admin view or action: the bilingual ``AuditUnavailable``."""
    try:
        yield
    except (SQLAlchemyError, DatabaseUnavailable, OSError):
        raise AuditUnavailable() from None


class Admin:
    """Administrator checks and what the Admin tab and the admin endpoints show.

    Every call is checked: a listed Hugging Face account, the admin token
    itself (API), or a grant the page got by entering the token. A grant is
    signed, names a fingerprint of the token (changing the token revokes every
    grant) and expires after ``grant_minutes``; the page keeps it in the
    browser, so knowing a session hash gives nothing.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        users: frozenset[str],
        token: str | None,
        secret: bytes,
        grant_minutes: int = 30,
    ) -> None:
        self.sessions = sessions
        self.users = users
        self._token = token
        self._fingerprint = hmac.new(secret, (token or "").encode(), hashlib.sha256).hexdigest()[:32]
        self._grants = URLSafeTimedSerializer(
            secret, salt="llmjp-demo/admin-grant", signer_kwargs={"digest_method": hashlib.sha256}
        )
        self.grant_seconds = grant_minutes * 60

    def is_admin(self, profile: gr.OAuthProfile | None, credential: object) -> bool:
        """A listed Hugging Face user, the holder of the admin token, or of an unexpired grant."""
        username = getattr(profile, "username", None) if profile is not None else None
        if username and username in self.users:
            return True
        if not (self._token and isinstance(credential, str) and credential) or len(credential) > 1024:
            return False
        if self._holds_token(credential):
            return True
        try:
            named = self._grants.loads(credential, max_age=self.grant_seconds)
        except (BadSignature, ValueError, TypeError, UnicodeError):
            return False
        return isinstance(named, str) and hmac.compare_digest(named, self._fingerprint)

    def _holds_token(self, credential: object) -> bool:
        """Whether ``credential`` is the admin token (compared in constant time)."""
        if not (self._token and isinstance(credential, str)):
            return False
        return hmac.compare_digest(self._token.encode(), credential.encode("utf-8", "replace"))

    def require(self, profile: gr.OAuthProfile | None, credential: object) -> None:
        """Raise ``NotAdmin`` unless the caller is an administrator."""
        if not self.is_admin(profile, credential):
            raise NotAdmin()

    # -- what administrators see ---------------------------------------------

    def per_day(self, days: int = 90) -> pd.DataFrame:
        """Acceptances per UTC day over the last ``days`` days."""
        since = datetime.now(UTC) - timedelta(days=days)
        with _audit_database(), self.sessions() as session:
            times = session.scalars(
                select(Event.created_at).where(Event.kind == EventKind.ACCEPTED.value, Event.created_at >= since)
            ).all()
        counts = Counter(t.date().isoformat() for t in times)
        return pd.DataFrame({"day": list(counts), "acceptances": list(counts.values())})

    def latest(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest events, newest first, as plain values."""
        with _audit_database(), self.sessions() as session:
            events = audit.latest(session, limit)
        return [
            {
                "seq": e.seq,
                "time (UTC)": e.created_at.isoformat(timespec="seconds"),
                "kind": e.kind,
                "identity": e.identity,
                **{k: v for k, v in audit.contact_of(e).items() if k != "user_agent"},
                "detail": " ".join(x for x in (e.terms_id, e.licence, e.model_id, e.reason, e.detail) if x),
            }
            for e in events
        ]

    def report(self, fmt: str, since: str = "") -> str:
        """The access report as CSV or JSON text."""
        start = _report_options(fmt, since)
        with _audit_database(), self.sessions() as session:
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
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise InvalidInput("limit は 1〜1000 の整数です。", "limit must be a whole number from 1 to 1000.")
        self.record(profile, admin_token, f"admin_events limit={limit}")
        return self.latest(limit)

    def admin_export(
        self,
        admin_token: str = "",
        format: str = "csv",
        since: str = "",
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """The access report as CSV or JSON text (administrators only)."""
        self.require(profile, admin_token)
        _report_options(format, since)  # refused before anything is recorded
        self.record(profile, admin_token, f"admin_export format={format} since={since}")
        return self.report(format, since)

    def dashboard(
        self, credential: str | None, profile: gr.OAuthProfile | None
    ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """The Admin tab's plot, table and the access report as a download link.

        The report travels inside the (administrator-only) response as a data
        link: it is never written to disk, so no copy is left for others to fetch.
        """
        self.require(profile, credential)
        self.record(profile, credential, "dashboard: latest events and access report")
        events = pd.DataFrame(self.latest(), columns=EVENT_COLUMNS)
        return self.per_day(), events, download_link(self.report("csv"), "access-report.csv", "text/csv")

    def sign_in(self, admin_token: str, profile: gr.OAuthProfile | None) -> tuple[str, Any]:
        """Check an admin token typed on the page; returns a short-lived grant for the browser to keep."""
        if not self._holds_token(admin_token):
            self.require(profile, None)  # a listed account needs no token
        return self._grants.dumps(self._fingerprint), gr.Tab(visible=True)

    # -- what administrators do, on the record ----------------------------------

    def who(self, profile: gr.OAuthProfile | None, credential: object) -> str:
        """The administrator as the log names them: their account, else how they proved it."""
        username = getattr(profile, "username", None) if profile is not None else None
        if username and username in self.users:
            return f"hf:{username}"
        if self._holds_token(credential):
            return "admin:token"
        return "admin:grant"

    def record(self, profile: gr.OAuthProfile | None, credential: object, action: str) -> None:
        """Record an administrator's view or export before showing anything; unrecorded means not shown."""
        with _audit_database(), self.sessions.begin() as session:
            audit.admin_access(session, who=self.who(profile, credential), action=action)

    def admin_erase(self, admin_token: str = "", identity: str = "", profile: gr.OAuthProfile | None = None) -> str:
        """Erase one identity's contact fields and the conversations it kept on the server (administrators
        only); the erasure is itself an event."""
        self.require(profile, admin_token)
        if not isinstance(identity, str) or not IDENTITY.fullmatch(identity.strip()):
            raise InvalidInput("identity を指定してください。", "Give the identity to erase, as the report shows it.")
        with _audit_database():
            with self.sessions.begin() as session:
                erasure = audit.erase_person(session, identity=identity.strip(), by=self.who(profile, admin_token))
            checkpoint(self.sessions.kw["bind"])
        kept_ja = f"、サーバーに保存された会話 {erasure.conversations} 件" if erasure.conversations is not None else ""
        return f"{erasure.contacts} 件の連絡先{kept_ja}を消去しました。 / Erased {erasure.detail()}."


def _report_options(fmt: object, since: object) -> datetime | None:
    """The report's start time, once ``fmt`` and ``since`` are checked; raises a bilingual ``InvalidInput``."""
    if not isinstance(fmt, str) or fmt not in ("csv", "json"):
        raise InvalidInput("format は csv か json です。", "format must be csv or json.")
    try:
        if not isinstance(since, str) or len(since) > 64:
            raise ValueError(since)
        return export.parse_since(since) if since else None
    except ValueError:
        raise InvalidInput("since は 2026-11-01 の形式の日付です。", "since must be a date like 2026-11-01.") from None
