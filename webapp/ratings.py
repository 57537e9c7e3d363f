"""What administrators see of the visitors' ratings: counts per model and an export."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from db import feedback
from webapp.admin import Admin


class Ratings:
    """The ratings part of the Admin tab; every call checks the caller on the server."""

    def __init__(self, sessions: sessionmaker[Session], admin: Admin) -> None:
        self.sessions = sessions
        self.admin = admin
        self._export = Path(tempfile.mkdtemp(prefix="llmjp-ratings-")) / "ratings.csv"

    def dashboard(self, admin_token: str | None, profile: gr.OAuthProfile | None) -> tuple[pd.DataFrame, str]:
        """Counts per model, and every rating as a CSV download."""
        self.admin.require(profile, admin_token)
        with self.sessions() as session:
            counts = feedback.counts(session)
            rows = feedback.rows(session)
        self._export.write_text(feedback.to_csv(rows), encoding="utf-8")
        return pd.DataFrame(counts, columns=["model_id", "up", "down"]), str(self._export)

    def admin_feedback(self, admin_token: str = "", profile: gr.OAuthProfile | None = None) -> dict[str, Any]:
        """Ratings per model and every rating (administrators only)."""
        self.admin.require(profile, admin_token)
        with self.sessions() as session:
            return {"counts": feedback.counts(session), "ratings": feedback.rows(session)}
