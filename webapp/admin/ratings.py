"""What administrators see of the visitors' ratings: counts per model and an export."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from db import feedback
from webapp.admin.audit import Admin
from webapp.downloads import download_link


class Ratings:
    """The ratings part of the Admin tab; every call checks the caller on the server."""

    def __init__(self, sessions: sessionmaker[Session], admin: Admin) -> None:
        self.sessions = sessions
        self.admin = admin

    def dashboard(self, credential: str | None, profile: gr.OAuthProfile | None) -> tuple[pd.DataFrame, str]:
        """Counts per model, and every rating as a CSV download link (never written to disk)."""
        self.admin.require(profile, credential)
        self.admin.record(profile, credential, "dashboard: ratings")  # shared conversations are personal data
        with self.sessions() as session:
            counts = feedback.counts(session)
            rows = feedback.rows(session)
        link = download_link(feedback.to_csv(rows), "ratings.csv", "text/csv")
        return pd.DataFrame(counts, columns=["model_id", "up", "down"]), link

    def admin_feedback(self, admin_token: str = "", profile: gr.OAuthProfile | None = None) -> dict[str, Any]:
        """Ratings per model and every rating (administrators only)."""
        self.admin.require(profile, admin_token)
        self.admin.record(profile, admin_token, "admin_feedback")
        with self.sessions() as session:
            return {"counts": feedback.counts(session), "ratings": feedback.rows(session)}
