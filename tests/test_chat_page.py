"""The chat page's logic without a browser: notes, stop/cut marks, the model's view, export, form errors, ratings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from db import feedback
from db.engine import make_engine, session_factory, upgrade
from inference.progress import Finished, Queued, Trimmed
from webapp.chat.export import conversation_json, conversation_markdown
from webapp.chat.messages import Outcome, note_title, status_text, text_of, to_history
from webapp.gate.terms import Terms
from webapp.ui.terms import field_errors

NOTE = {"role": "assistant", "content": "sampling…", "metadata": {"title": "tiny-llama", "id": "r1", "status": "done"}}
CONVERSATION = [
    {"role": "user", "content": "富士山について"},
    NOTE,
    {"role": "assistant", "content": "日本一高い山です。"},
    {"role": "user", "content": [{"type": "text", "text": "高さは?"}]},
]
RECORD = {"model_id": "tiny-llama", "revision": "abc123", "sampling": {"temperature": 0.7, "seed": 3}, "seconds": 1.5}


def test_notes_never_reach_the_model() -> None:
    assert to_history(CONVERSATION) == [
        {"role": "user", "content": "富士山について"},
        {"role": "assistant", "content": "日本一高い山です。"},
        {"role": "user", "content": "高さは?"},
    ]


def test_the_page_and_the_api_read_message_parts_alike() -> None:
    from webapp.handlers import parse_history

    parts = [
        {"type": "text", "text": "高さは"},
        {"type": "text", "text": 5},
        {"type": "image"},
        "x",
        {"type": "text", "text": "?"},
    ]
    assert text_of(parts) == "高さは?"  # what is not text is left out, whatever a client sends
    assert parse_history([{"role": "user", "content": parts}]) == [{"role": "user", "content": "高さは?"}]


def test_the_note_marks_stopped_and_cut_replies_and_shows_speed() -> None:
    done = note_title("ja", Outcome(label="tiny-llama", seconds=2.0, tokens=50))
    assert done == "tiny-llama · 50 トークン · 25.0 トークン/秒"
    assert note_title("ja", Outcome(label="m", seconds=1.0, stopped=True)).endswith("■ 停止しました")
    assert note_title("en", Outcome(label="m", seconds=1.0, tokens=9, cut=True)).endswith("✂ Cut off at the limit")
    # Without token counts nothing is guessed: the model only.
    assert note_title("en", Outcome(label="m", seconds=1.0)) == "m"


def test_statuses_speak_the_pages_language() -> None:
    assert status_text("ja", Queued(2)) == "順番待ち: 2 番目です。"
    assert status_text("en", Queued(2)) == "In the queue: position 2."
    assert "3" in status_text("ja", Trimmed(3)) and "古い発言" in status_text("ja", Trimmed(3))
    # The API gives both languages, in the same words.
    assert Trimmed(3).describe() == f"{status_text('ja', Trimmed(3))} / {status_text('en', Trimmed(3))}"
    finished = Finished("tiny-llama", None, 10, 20, 1.0, "length", 0)
    assert "tiny-llama" in finished.describe()


def test_export_names_model_revision_sampling_seed_and_terms() -> None:
    terms = Terms.load()
    data = conversation_json(CONVERSATION, {"r1": RECORD}, terms)
    json.dumps(data)  # plain JSON
    assert data["terms"] == {"id": terms.id, "sha256": terms.sha256}
    reply = data["messages"][1]
    assert reply["content"] == "日本一高い山です。"
    assert (reply["model_id"], reply["revision"], reply["sampling"]["seed"]) == ("tiny-llama", "abc123", 3)
    assert "sampling" not in data["messages"][2]  # the user's turn carries nothing of a model
    markdown = conversation_markdown(data)
    assert "## tiny-llama" in markdown and "高さは?" in markdown and terms.sha256 in markdown


def test_form_errors_are_per_field() -> None:
    good = {"name": "例 太郎", "email": "example@example.com", "affiliation": "例", "purpose": "試験", "agree": True}
    assert field_errors(good) == {}
    bad = field_errors(good | {"name": "  ", "email": "not-an-address", "agree": False})
    assert bad == {"name": "field_required", "email": "field_email", "agree": "field_agree"}


def test_ratings_live_in_their_own_table(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        up = feedback.record(
            session, rating=feedback.Rating.UP, model_id="tiny-llama", revision=None, sampling={"top_k": 50}
        ).id
        feedback.record(session, rating=feedback.Rating.DOWN, model_id="tiny-llama", revision="r", sampling={})
        feedback.record(session, rating=feedback.Rating.DOWN, model_id="tiny-gpt2", revision=None, sampling={})
    with sessions.begin() as session:
        feedback.annotate(session, up, comment=" =よい ", conversation=[{"role": "user", "content": "こんにちは"}])
    with sessions() as session:
        assert feedback.counts(session) == [
            {"model_id": "tiny-llama", "up": 1, "down": 1},
            {"model_id": "tiny-gpt2", "up": 0, "down": 1},
        ]
        rows = feedback.rows(session)
    assert rows[0]["comment"] == "=よい" and json.loads(rows[0]["conversation"])[0]["content"] == "こんにちは"
    assert rows[1]["conversation"] == ""  # not shared: not stored
    assert "'=よい" in feedback.to_csv(rows)  # a spreadsheet will not run it
    # Ratings never enter the consent chain.
    with engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 0
    with pytest.raises(IntegrityError), sessions.begin() as session:  # a rating names its model
        session.add(feedback.Feedback(created_at=datetime.now(UTC), rating="up", model_id=None, sampling="{}"))
    engine.dispose()
