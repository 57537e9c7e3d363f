"""A public deployment under a stranger's hands: floods, replays, spoofed headers, huge inputs, over HTTP."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError, ValidationError

from tests.conftest import ADMIN_TOKEN, GENEROUS_LIMITS, RunningApp, launch
from tests.hostile import call, database_bytes, error_of, event_count, fn_index, is_clear_error
from webapp.settings import Settings

FORM = {"name": "例 太郎", "email": "taro@example.com", "affiliation": "Example University", "purpose": "研究"}
CHAT = {"model_id": "tiny-llama", "temperature": 0.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.0}
CHAT_DATA = ["こんにちは", "tiny-llama", 0.0, 0.95, 0, 1.0, 8, None, None, None]


def visitor(app: RunningApp, address: str) -> Client:
    """A client behind the app's one trusted proxy, which says it came from ``address``."""
    return Client(app.url, verbose=False, headers={"X-Forwarded-For": address})


@pytest.fixture(scope="module")
def public_app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    """The app as deployed behind one proxy, with its default limits."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("public"),
        models="all",
        default_model="tiny-llama",
        hub_offline=True,
        admin_token=ADMIN_TOKEN,
        trusted_proxies=1,
    )
    app = launch(settings, models_dir)
    try:
        yield app
    finally:
        app.demo.close()


def first_token_seconds(client: Client, **change: object) -> float:
    """Time to the first streamed update of a short reply (read to its end, so it holds no slot after)."""
    start = time.monotonic()
    job = client.submit("富士山について教えて", **(CHAT | {"max_new_tokens": 16} | change), api_name="/chat")
    first = None
    for _ in job:
        first = first or time.monotonic() - start
    assert first is not None, f"no token: {job.result()}"
    return first


def test_a_megabyte_session_hash_is_refused_and_stores_nothing(public_app: RunningApp) -> None:
    base = public_app.url.rstrip("/") + "/gradio_api"
    size, events = database_bytes(public_app), event_count(public_app)
    for endpoint, data in [
        ("chat", CHAT_DATA),
        ("accept_terms", [*FORM.values(), True, None]),
        ("withdraw_consent", [None]),
    ]:
        body = json.dumps({"data": data, "fn_index": fn_index(public_app, endpoint), "session_hash": "s" * 1_000_000})
        joined = httpx.post(
            f"{base}/queue/join", content=body, headers={"content-type": "application/json"}, timeout=30
        )
        assert joined.status_code == 400 and is_clear_error(joined.text), joined.text[:200]
    for odd in ("../../etc", "a b", "é", "x" * 65):
        result = call(public_app, "accept_terms", [*FORM.values(), True, None], odd)
        assert is_clear_error(error_of(result)), result
    assert event_count(public_app) == events
    assert database_bytes(public_app) - size < 64 * 1024


def test_a_flood_of_refused_chats_adds_few_events_and_an_honest_visitor_still_streams(
    public_app: RunningApp,
) -> None:
    honest = visitor(public_app, "203.0.113.200")
    honest.predict(**FORM, agree=True, api_name="/accept_terms")
    alone = statistics.median(first_token_seconds(honest) for _ in range(3))
    size, events = database_bytes(public_app), event_count(public_app)
    outcomes: list[str] = []

    def flood(n: int) -> None:
        for _ in range(50):  # 6 clients x 50 = 300 refused chats, none of them accepted
            result = call(public_app, "chat", CHAT_DATA, uuid.uuid4().hex, headers={"X-Forwarded-For": f"192.0.2.{n}"})
            outcomes.append(error_of(result) or "")

    flooders = [threading.Thread(target=flood, args=(n,)) for n in range(6)]
    for thread in flooders:
        thread.start()
    during = [first_token_seconds(honest) for _ in range(3)]
    for thread in flooders:
        thread.join()
    assert len(outcomes) == 300 and all(is_clear_error(o) for o in outcomes)
    assert any("Too many requests" in o for o in outcomes)  # the rate limit met the flood
    assert event_count(public_app) - events <= 10
    assert database_bytes(public_app) - size < 1024 * 1024
    print(
        f"\nfirst token alone {alone * 1000:.0f} ms, during the flood median {statistics.median(during) * 1000:.0f} ms"
    )


def test_the_rate_limit_says_when_to_retry_in_both_languages(public_app: RunningApp) -> None:
    client = visitor(public_app, "203.0.113.7")
    refusals = []
    for _ in range(15):  # acceptances: 10 a minute per caller by default
        try:
            client.predict(**FORM, agree=True, api_name="/accept_terms")
        except AppError as exc:
            refusals.append(str(exc))
    assert len(refusals) >= 4  # (the first acceptance counts against the address, the rest against the identity)
    message = refusals[0]
    assert "リクエストが多すぎます" in message and "Too many requests. Please try again in" in message
    seconds = int(message.split("try again in ")[1].split(" s")[0])
    assert 1 <= seconds <= 60


def test_repeated_identical_acceptances_add_no_rows(public_app: RunningApp) -> None:
    client = visitor(public_app, "203.0.113.8")
    before = event_count(public_app)
    for _ in range(5):
        client.predict(**FORM, agree=True, api_name="/accept_terms")
    assert event_count(public_app) - before == 1


def test_nothing_an_administrator_sees_lets_anyone_act_as_the_visitor(public_app: RunningApp) -> None:
    victim = visitor(public_app, "203.0.113.9")
    _, receipt = victim.predict(**(FORM | {"name": "被害 者"}), agree=True, api_name="/accept_terms")
    admin = visitor(public_app, "203.0.113.10")
    rows = [
        e for e in admin.predict(admin_token=ADMIN_TOKEN, limit=50, api_name="/admin_events") if e["name"] == "被害 者"
    ]
    report = admin.predict(admin_token=ADMIN_TOKEN, format="json", api_name="/admin_export")
    report_csv = admin.predict(admin_token=ADMIN_TOKEN, format="csv", api_name="/admin_export")
    identity = rows[0]["identity"]
    assert identity in report and identity in report_csv
    # Nothing the admin views show is the receipt, the session hash, or inside the receipt.
    shown = f"{rows}{report}{report_csv}"
    assert receipt not in shown and victim.session_hash not in shown
    payload = receipt.split(".")[0]
    assert identity.split(":", 1)[1] not in payload

    attacker = visitor(public_app, "203.0.113.11")
    candidates = [identity, identity.split(":", 1)[1], payload, victim.session_hash]
    for stolen in candidates:
        with pytest.raises(AppError, match="Accept the current terms"):
            attacker.predict("こんにちは", **CHAT, max_new_tokens=4, receipt=stolen, api_name="/chat")
        with pytest.raises(AppError, match="no consent to withdraw"):
            attacker.predict(receipt=stolen, api_name="/withdraw_consent")
    # Used as a session hash, the identity or the victim's own session hash gets nothing either.
    for session in [identity.split(":", 1)[1], victim.session_hash]:
        result = call(public_app, "withdraw_consent", [None], session, headers={"X-Forwarded-For": "203.0.113.12"})
        assert error_of(result) is not None
    assert victim.predict("こんにちは", **CHAT, max_new_tokens=4, receipt=receipt, api_name="/chat")  # still holds


def test_a_huge_history_is_refused_at_once_and_others_are_unaffected(public_app: RunningApp) -> None:
    heavy = visitor(public_app, "203.0.113.13")
    heavy.predict(**FORM, agree=True, api_name="/accept_terms")
    other = visitor(public_app, "203.0.113.14")
    other.predict(**FORM, agree=True, api_name="/accept_terms")
    alone = first_token_seconds(other)
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "あ" * 5_000} for i in range(100)]

    def refuse() -> tuple[float, str]:
        start = time.monotonic()
        # Refused at the door, before Gradio reads it: a client sees a failed validation with the message.
        with pytest.raises((AppError, ValidationError), match="too long") as err:
            heavy.predict("続けて", **CHAT, max_new_tokens=8, history=history, api_name="/chat")
        return time.monotonic() - start, str(err.value)

    with ThreadPoolExecutor(1) as pool:
        refused = pool.submit(refuse)
        during = first_token_seconds(other)
        elapsed, message = refused.result()
    assert "会話の履歴が長すぎます" in message
    assert elapsed < 1.0, elapsed
    assert during < alone + 1.0, (alone, during)  # the other visitor's reply is not held up


def test_one_visitor_holds_at_most_two_replies(public_app: RunningApp) -> None:
    client = visitor(public_app, "203.0.113.15")
    _, receipt = client.predict(**FORM, agree=True, api_name="/accept_terms")
    long = CHAT | {"model_id": "tiny-gpt2", "max_new_tokens": 2048}
    jobs = [client.submit("こんにちは", **long, api_name="/chat") for _ in range(2)]
    deadline = time.monotonic() + 20
    while public_app.backend.active == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(2.0)  # the second reaches the server and waits in the lane behind the first (2,048 tokens)
    with pytest.raises(AppError, match="At most 2 replies"):
        client.predict("こんにちは", **CHAT, max_new_tokens=4, api_name="/chat")
    client.predict(receipt=receipt, api_name="/withdraw_consent")  # which also stops both
    for job in jobs:
        with pytest.raises(AppError, match="consent was withdrawn"):
            job.result(timeout=10)


def test_withdrawal_stops_running_and_queued_replies(public_app: RunningApp) -> None:
    backend = public_app.backend
    client = visitor(public_app, "203.0.113.16")
    _, receipt = client.predict(**FORM, agree=True, api_name="/accept_terms")
    long = {"model_id": "tiny-gpt2", "max_new_tokens": 2048}
    running = client.submit("こんにちは", **(CHAT | long), receipt=receipt, api_name="/chat")
    deadline = time.monotonic() + 20
    while backend.active == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = client.submit("こんにちは", **(CHAT | long), receipt=receipt, api_name="/chat")  # waits for the lane
    time.sleep(0.3)
    calls = backend.calls
    withdrawer = visitor(public_app, "203.0.113.16")
    withdrawer.predict(receipt=receipt, api_name="/withdraw_consent")
    stopped_at = time.monotonic()
    while backend.active and time.monotonic() - stopped_at < 5:
        time.sleep(0.005)
    assert backend.active == 0 and time.monotonic() - stopped_at < 1.0
    chunks = backend.chunks
    for job in (running, queued):
        with pytest.raises(AppError, match="consent was withdrawn"):
            job.result(timeout=10)
    assert backend.calls == calls  # the queued reply never reached the model
    time.sleep(0.3)
    assert backend.chunks == chunks


def test_a_client_written_forwarded_for_does_not_change_the_address_hash(public_app: RunningApp) -> None:
    """Behind one trusted proxy the client is the last X-Forwarded-For entry; what it wrote before is ignored."""
    import sqlite3

    hashes = []
    for spoof in ("6.6.6.6", "7.7.7.7, 8.8.8.8", ""):
        forwarded = f"{spoof}, 203.0.113.50" if spoof else "203.0.113.50"
        client = Client(public_app.url, verbose=False, headers={"X-Forwarded-For": forwarded})
        client.predict(**(FORM | {"name": f"転送 {len(hashes)}"}), agree=True, api_name="/accept_terms")
        with sqlite3.connect(public_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
            hashes.append(conn.execute("SELECT client_hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()[0])
    other = Client(public_app.url, verbose=False, headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.51"})
    other.predict(**(FORM | {"name": "別 人"}), agree=True, api_name="/accept_terms")
    with sqlite3.connect(public_app.settings.data_dir / "llmjp-demo.sqlite3") as conn:
        different = conn.execute("SELECT client_hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()[0]
    assert len(set(hashes)) == 1 and hashes[0] and different != hashes[0]
    assert "203.0.113.50" not in str(hashes)


def test_refusals_log_one_line_without_traceback(public_app: RunningApp, capfd: pytest.CaptureFixture) -> None:
    capfd.readouterr()
    stranger = visitor(public_app, "203.0.113.17")
    for _ in range(3):
        with pytest.raises(AppError):
            stranger.predict("こんにちは", **CHAT, max_new_tokens=4, api_name="/chat")
        with pytest.raises(AppError):
            stranger.predict(**(FORM | {"email": "secret-person@example.org"}), agree=False, api_name="/accept_terms")
    time.sleep(0.2)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "secret-person" not in out + err


def test_uploads_are_bounded(public_app: RunningApp) -> None:
    upload = httpx.post(
        public_app.url.rstrip("/") + "/gradio_api/upload",
        files={"files": ("big.bin", b"\0" * (5 * 1024 * 1024))},
        timeout=30,
    )
    assert upload.status_code >= 400


def test_request_bodies_are_bounded(public_app: RunningApp) -> None:
    body = b'{"data": ["' + b"x" * (3 * 1024 * 1024) + b'"], "fn_index": 0, "session_hash": "abc"}'
    response = httpx.post(
        public_app.url.rstrip("/") + "/gradio_api/queue/join",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413


def test_the_access_report_never_touches_disk(public_app: RunningApp, tmp_path: Path) -> None:
    """The dashboard's report is a data link in the administrator's response: no file anyone else could fetch."""
    import base64

    from db.engine import make_engine, session_factory
    from webapp.admin.audit import Admin

    temp = Path(tempfile.gettempdir())

    def written() -> set[str]:
        # os.walk passes over a directory that goes while it walks (a browser's profile, another test's files).
        found = {str(p) for p in temp.glob("llmjp-export-*")}
        return found | {f"{d}/{f}" for d, _, files in os.walk(temp) for f in files if f.startswith("access-report")}

    before = written()
    engine = make_engine(public_app.settings.resolved_database_url)
    admin = Admin(
        session_factory(engine), users=frozenset(), token=ADMIN_TOKEN, secret=public_app.settings.server_secret()
    )
    grant, _ = admin.sign_in(ADMIN_TOKEN, None)
    _, _, link = admin.dashboard(grant, None)
    engine.dispose()
    data = link.split("base64,")[1].split('"')[0]
    assert base64.b64decode(data).decode().startswith("identity,")
    assert written() == before


def test_other_origins_are_refused_when_sign_in_is_on(models_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "signin", models="tiny", hub_offline=True, allowed_origins="https://ok.example",
        **GENEROUS_LIMITS,
    )  # fmt: skip
    app = launch(settings, models_dir)
    try:
        config = app.url.rstrip("/") + "/config"
        host = httpx.URL(app.url).netloc.decode()
        assert httpx.get(config, headers={"Origin": "https://evil.example"}).status_code == 403
        assert httpx.get(config, headers={"Origin": f"http://{host}"}).status_code == 200
        assert httpx.get(config, headers={"Origin": "https://ok.example"}).status_code == 200
        assert httpx.get(config).status_code == 200  # API clients send no Origin
    finally:
        app.demo.close()


def test_admin_rights_come_with_each_call_never_from_the_session(
    public_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signed-in administrator's session hash, replayed, opens nothing; the page's grant expires."""
    import itsdangerous

    session = uuid.uuid4().hex
    headers = {"X-Forwarded-For": "203.0.113.30"}
    signed_in = call(public_app, "page_admin_sign_in", [ADMIN_TOKEN], session, headers=headers)
    assert error_of(signed_in) is None
    grant = signed_in["output"]["data"][0]
    assert grant and ADMIN_TOKEN not in grant
    opened = call(public_app, "page_admin_refresh", [grant], session, headers=headers)
    assert error_of(opened) is None
    for replay_headers in (headers, {"X-Forwarded-For": "203.0.113.31"}):
        replay = call(public_app, "page_admin_refresh", [""], session, headers=replay_headers)
        assert "Only administrators" in (error_of(replay) or "")
    # A grant from 31 minutes ago is refused; so is one signed with another key.
    monkeypatch.setattr(itsdangerous.TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 31 * 60)
    old = call(public_app, "page_admin_sign_in", [ADMIN_TOKEN], session, headers=headers)["output"]["data"][0]
    monkeypatch.undo()
    for stale in (old, grant[:-2] + "xx"):
        assert "Only administrators" in (error_of(call(public_app, "page_admin_refresh", [stale], session)) or "")


def test_one_address_makes_few_new_identities(models_dir: Path, tmp_path: Path) -> None:
    """Each first acceptance is a row that stays: fresh sessions from one address are counted."""
    limits = GENEROUS_LIMITS | {"rate_new_identity_address": "3/hour"}
    settings = Settings(data_dir=tmp_path / "ids", models="tiny", hub_offline=True, trusted_proxies=1, **limits)
    app = launch(settings, models_dir)
    try:
        receipts = [
            visitor(app, "198.51.100.9").predict(**FORM, agree=True, api_name="/accept_terms")[1] for _ in range(3)
        ]
        with pytest.raises(AppError, match="Too many requests"):
            visitor(app, "198.51.100.9").predict(**FORM, agree=True, api_name="/accept_terms")
        # Returning visitors, and other addresses, are not new identities from this one.
        visitor(app, "198.51.100.9").predict(**FORM, agree=True, receipt=receipts[0], api_name="/accept_terms")
        visitor(app, "198.51.100.10").predict(**FORM, agree=True, api_name="/accept_terms")
    finally:
        app.demo.close()
