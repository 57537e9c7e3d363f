"""Identity, receipts, terms versions, withdrawal, licences and the admin endpoints, over HTTP."""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import itsdangerous
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import ADMIN_TOKEN, RunningApp, identity_of, launch, mock_hf_login
from webapp.gate.identity import Identities
from webapp.gate.receipts import Receipt, Receipts
from webapp.gate.terms import Terms

FORM = {"name": "山田 太郎", "email": "taro@example.jp", "affiliation": "NII", "purpose": "研究", "agree": True}
CHAT = {
    "model_id": "tiny-llama",
    "temperature": 0.0,
    "top_p": 0.95,
    "top_k": 0,
    "repetition_penalty": 1.0,
    "max_new_tokens": 8,
}
REFUSED = r"Accept the current terms"


def chat(client: Client, receipt: str | None = None, **change: object) -> str:
    return client.predict("こんにちは", **(CHAT | change), receipt=receipt, api_name="/chat")


def events(app: RunningApp, kind: str) -> list[tuple]:
    with sqlite3.connect(app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        return conn.execute(
            "SELECT identity, reason, model_id, licence FROM events WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()


def receipts_of(app: RunningApp) -> Receipts:
    return Receipts(app.settings.server_secret(), max_age_days=app.settings.receipt_days)


def identities_of(app: RunningApp) -> Identities:
    return Identities(receipts_of(app), app.settings.server_secret())


def test_receipt_recognises_a_returning_visitor(running_app: RunningApp) -> None:
    first = running_app.client()
    _, receipt = first.predict(**FORM, api_name="/accept_terms")
    later = running_app.client()  # a new session: a reload, or another day
    with pytest.raises(AppError, match=REFUSED):
        chat(later)
    assert chat(later, receipt) is not None  # no second acceptance needed
    assert len([e for e in events(running_app, "accepted") if e[0] == identity_of(running_app, receipt)]) == 1


def test_forged_altered_expired_receipts_unlock_nothing(
    running_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = running_app.client()
    _, genuine = client.predict(**FORM, api_name="/accept_terms")
    anon_id = receipts_of(running_app).read(genuine).anon_id
    forged = Receipts(b"not-the-server-secret-0123456789abcdef", max_age_days=90).issue(
        Receipt(anon_id, "llm-jp-3-172b-beta1-tou", Terms.load().sha256)
    )
    payload, rest = genuine.split(".", 1)
    altered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + rest
    monkeypatch.setattr(itsdangerous.TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 91 * 86400)
    expired = receipts_of(running_app).issue(Receipt(anon_id, "llm-jp-3-172b-beta1-tou", Terms.load().sha256))
    monkeypatch.undo()
    before = running_app.backend.calls
    refused_before = len(events(running_app, "refused"))
    stranger = running_app.client()
    for bad in (forged, altered, expired, "garbage", genuine + "x"):
        with pytest.raises(AppError, match=REFUSED):
            chat(stranger, bad)
    assert running_app.backend.calls == before
    # None of them is the visitor's identity: refusals are recorded as identity-less, at most once a window.
    refused = events(running_app, "refused")[refused_before:]
    assert len(refused) <= 1 and {e[0] for e in refused} <= {"anon:-"}


def test_receipt_for_old_terms_unlocks_nothing_until_accepted_again(running_app: RunningApp) -> None:
    """An identity whose only acceptance is of an earlier text is asked to accept the current one."""
    from db import audit
    from db.engine import make_engine, session_factory

    anon_id = "returning-from-old-terms-0123456789"
    identity = identities_of(running_app).pseudonym(anon_id)
    engine = make_engine(running_app.settings.resolved_database_url)
    with session_factory(engine).begin() as s:
        audit.accept(s, identity=identity, terms_id="llm-jp-3-172b-beta1-tou", terms_sha256="0" * 64,
                     contact=audit.Contact(name="n", email="n@example.jp", affiliation="a", purpose="p"))  # fmt: skip
    engine.dispose()
    old = receipts_of(running_app).issue(Receipt(anon_id, "llm-jp-3-172b-beta1-tou", "0" * 64))
    client = running_app.client()
    with pytest.raises(AppError, match=REFUSED):
        chat(client, old)
    _, new = client.predict(**FORM, receipt=old, api_name="/accept_terms")  # same identity, new terms
    assert identity_of(running_app, new) == identity
    assert chat(client, new) is not None


def test_changed_terms_text_locks_earlier_acceptances(running_app: RunningApp, models_dir: Path) -> None:
    client = running_app.client()
    _, receipt = client.predict(**FORM, api_name="/accept_terms")
    shipped = Terms.load()
    revised = Terms(shipped.id, shipped.ja.replace("東京地方裁判所", "大阪地方裁判所"), shipped.en)
    assert revised.sha256 != shipped.sha256
    other = launch(running_app.settings, models_dir, terms=revised)  # same database, new text
    try:
        revisit = other.client()
        with pytest.raises(AppError, match=REFUSED):
            chat(revisit, receipt)
        revisit.predict(**FORM, receipt=receipt, api_name="/accept_terms")
        assert chat(revisit, receipt) is not None
    finally:
        other.demo.close()


def test_withdrawn_consent_locks_at_once(running_app: RunningApp) -> None:
    client = running_app.client()
    _, receipt = client.predict(**FORM, api_name="/accept_terms")
    assert chat(client, receipt) is not None
    assert "撤回" in client.predict(receipt=receipt, api_name="/withdraw_consent")
    for r in (receipt, None):
        with pytest.raises(AppError, match=REFUSED):
            chat(client, r)
    with pytest.raises(AppError, match="no consent to withdraw"):
        client.predict(receipt=receipt, api_name="/withdraw_consent")
    assert [e[0] for e in events(running_app, "withdrawn")].count(identity_of(running_app, receipt)) == 1


def page_messages(app: RunningApp, api_name: str, data: list[object]) -> list[dict]:
    """Every message the queue sends the page for one event (notices, then the result), as the browser reads them."""
    base = app.url.rstrip("/") + "/gradio_api"
    config = httpx.get(app.url.rstrip("/") + "/config", timeout=10).json()
    index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    session, messages = f"page-{time.monotonic_ns()}", []
    with httpx.Client(timeout=60) as http:
        http.post(
            f"{base}/queue/join", json={"data": data, "fn_index": index, "session_hash": session}
        ).raise_for_status()
        with http.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    messages.append(json.loads(line[5:]))
                    if messages[-1].get("msg") == "process_completed":
                        return messages
    raise AssertionError(f"the stream ended without a result: {messages}")


@pytest.mark.parametrize(
    ("lang", "confirmation"), [("ja", "CC BY-NC 4.0 の条件を確認しました。"), ("en", "Acknowledged: CC BY-NC 4.0.")]
)
def test_the_page_confirms_an_acknowledgement(running_app: RunningApp, lang: str, confirmation: str) -> None:
    _, receipt = running_app.client().predict(**FORM, api_name="/accept_terms")
    with warnings.catch_warnings(record=True) as caught:  # Gradio warns in the server when an event's outputs are wrong
        warnings.simplefilter("always")
        messages = page_messages(running_app, "page_ack", ["weblab-10b-instruction-sft", receipt, lang])
    assert messages[-1]["success"], messages[-1]
    assert [(m["log"], m["level"]) for m in messages if m["msg"] == "log"] == [(confirmation, "info")]
    assert [str(w.message) for w in caught if "output values" in str(w.message)] == []
    identity = identity_of(running_app, receipt)
    assert [e for e in events(running_app, "licence_acknowledged") if e[0] == identity] != []


def test_non_commercial_licence_needs_one_acknowledgement(running_app: RunningApp) -> None:
    client = running_app.client()
    _, receipt = client.predict(**FORM, api_name="/accept_terms")
    weblab = {"model_id": "weblab-10b-instruction-sft"}
    before = running_app.backend.calls
    with pytest.raises(AppError, match="non-commercial"):
        chat(client, receipt, **weblab)
    assert running_app.backend.calls == before
    identity = identity_of(running_app, receipt)
    assert (identity, "licence_not_acknowledged", "weblab-10b-instruction-sft", None) in events(running_app, "refused")
    for _ in range(2):  # acknowledged once per identity and licence, however often asked
        client.predict(model_id="weblab-10b-instruction-sft", receipt=receipt, api_name="/acknowledge_licence")
    acks = [e for e in events(running_app, "licence_acknowledged") if e[0] == identity]
    assert acks == [(identity, None, "weblab-10b-instruction-sft", "CC BY-NC 4.0")]
    # The gate now lets it through: what stops it is only that weights cannot be downloaded here.
    with pytest.raises(AppError, match="Cannot download matsuo-lab/weblab-10b-instruction-sft"):
        chat(client, receipt, **weblab)
    # The base model shares the licence: no second acknowledgement.
    with pytest.raises(AppError, match="Cannot download matsuo-lab/weblab-10b"):
        chat(client, receipt, model_id="weblab-10b")


def test_licence_acknowledgement_needs_consent_first(running_app: RunningApp) -> None:
    with pytest.raises(AppError, match=REFUSED):
        running_app.client().predict(model_id="weblab-10b-instruction-sft", api_name="/acknowledge_licence")


@pytest.mark.parametrize("token", ["", "wrong", ADMIN_TOKEN[:-1], ADMIN_TOKEN + " "])
def test_admin_endpoints_refuse_non_admins(running_app: RunningApp, token: str) -> None:
    client = running_app.client()
    client.predict(**FORM, api_name="/accept_terms")  # having accepted the terms makes no one an admin
    with pytest.raises(AppError, match="Only administrators"):
        client.predict(admin_token=token, api_name="/admin_events")
    with pytest.raises(AppError, match="Only administrators"):
        client.predict(admin_token=token, format="csv", api_name="/admin_export")


def test_admin_token_opens_the_log(running_app: RunningApp) -> None:
    client = running_app.client()
    client.predict(**(FORM | {"name": "<img src=x onerror=alert(1)>"}), api_name="/accept_terms")
    latest = client.predict(admin_token=ADMIN_TOKEN, limit=5, api_name="/admin_events")
    # The view is recorded before it is shown: the newest event is this very access.
    assert (latest[0]["kind"], latest[0]["identity"]) == ("admin_access", "admin:token")
    assert "admin_events limit=5" in latest[0]["detail"]
    assert latest[1]["kind"] == "accepted" and latest[1]["name"] == "<img src=x onerror=alert(1)>"
    report = client.predict(admin_token=ADMIN_TOKEN, format="json", api_name="/admin_export")
    assert '"<img src=x onerror=alert(1)>"' in report
    with sqlite3.connect(running_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        last = conn.execute("SELECT kind, identity, detail FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    assert last == ("admin_access", "admin:token", "admin_export format=json since=")
    with pytest.raises(AppError, match="format must be csv or json"):
        client.predict(admin_token=ADMIN_TOKEN, format="xml", api_name="/admin_export")


def test_private_page_events_cannot_be_called_as_api(running_app: RunningApp) -> None:
    """The page's own admin events are not an unguarded side door."""
    with pytest.raises(ValueError, match="Cannot find"):
        running_app.client().predict("x", api_name="/page_admin_sign_in")


def test_no_raw_address_is_stored(running_app: RunningApp) -> None:
    client = running_app.client()
    client.predict(**FORM, api_name="/accept_terms")
    with sqlite3.connect(running_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        dump = "\n".join(conn.iterdump())
        hashes = {h for (h,) in conn.execute("SELECT client_hash FROM events WHERE client_hash IS NOT NULL")}
    assert "127.0.0.1" not in dump
    assert hashes and all(len(h) == 32 for h in hashes)


# -- Sign in with Hugging Face (Gradio's mocked OAuth; the hub itself is mocked) -----


@pytest.fixture(scope="module")
def oauth_app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    from webapp.settings import Settings

    patch = pytest.MonkeyPatch()
    mock_hf_login(patch)
    settings = Settings(data_dir=tmp_path_factory.mktemp("oauth"), models="tiny", hub_offline=True, oauth=True,
                        admin_users="alice,bob")  # fmt: skip
    app = launch(settings, models_dir)
    try:
        yield app
    finally:
        app.demo.close()
        patch.undo()


def signed_in(app: RunningApp) -> Client:
    """A new client (a new device) signed in as alice through the login route."""
    login = httpx.get(app.url.rstrip("/") + "/login/huggingface", follow_redirects=False, timeout=10)
    callback = httpx.get(app.url.rstrip("/") + login.headers["location"], follow_redirects=False, timeout=10)
    cookie = callback.headers["set-cookie"].split(";")[0]
    return Client(app.url, headers={"cookie": cookie}, verbose=False)


def test_account_acceptance_holds_across_devices(oauth_app: RunningApp) -> None:
    laptop = signed_in(oauth_app)
    _, receipt = laptop.predict(**FORM, api_name="/accept_terms")
    assert receipt == ""  # the account is the identity: no receipt needed
    phone = signed_in(oauth_app)
    assert chat(phone) is not None
    with pytest.raises(AppError, match=REFUSED):
        chat(oauth_app.client())  # signed out: not alice
    with sqlite3.connect(oauth_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        assert conn.execute("SELECT identity FROM events WHERE kind = 'accepted'").fetchall() == [("hf:alice",)]


def test_listed_account_is_admin_without_a_token(oauth_app: RunningApp) -> None:
    assert "hf:alice" in {e["identity"] for e in signed_in(oauth_app).predict(api_name="/admin_events")}
    with pytest.raises(AppError, match="Only administrators"):
        oauth_app.client().predict(api_name="/admin_events")
