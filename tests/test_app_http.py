"""The real app over HTTP with gradio_client: the gate, the stream, the record, bad input."""

from __future__ import annotations

import itertools
import math
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from gradio_client.exceptions import AppError

from tests.conftest import RunningApp, identity_of
from tests.hostile import call
from webapp.gate.terms import Terms

FORM = {
    "name": "山田 太郎",
    "email": "taro@example.jp",
    "affiliation": "国立情報学研究所",
    "purpose": "研究",
    "agree": True,
}
GOOD = {
    "model_id": "tiny-llama",
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 0,
    "repetition_penalty": 1.05,
    "max_new_tokens": 16,
}


def rows(app: RunningApp) -> list[tuple]:
    path = app.settings.data_dir / "llmjp-demo.sqlite3"
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT e.identity, terms_id, terms_sha256, name, email, affiliation, purpose, e.created_at, user_agent"
            " FROM events e JOIN contacts c ON c.seq = e.seq WHERE kind = 'accepted' ORDER BY e.seq"
        ).fetchall()


@pytest.fixture(scope="module")
def accepted(running_app: RunningApp):
    """A visitor that has accepted the terms through the API."""
    client = running_app.client()
    client.predict(**FORM, api_name="/accept_terms")
    return client


def test_chat_without_acceptance_is_refused_with_zero_tokens(running_app: RunningApp) -> None:
    client = running_app.client()
    before = (running_app.backend.calls, running_app.backend.chunks)
    with pytest.raises(AppError, match=r"利用規約.*Accept the current terms"):
        client.predict("富士山について教えて", **GOOD, api_name="/chat")
    assert (running_app.backend.calls, running_app.backend.chunks) == before


def test_after_acceptance_the_same_client_streams(running_app: RunningApp) -> None:
    client = running_app.client()
    count = len(rows(running_app))
    with pytest.raises(AppError):
        client.predict("こんにちは", **GOOD, api_name="/chat")
    status, receipt = client.predict(**FORM, api_name="/accept_terms")
    assert "同意を記録しました" in status and receipt
    job = client.submit("富士山について教えて", **(GOOD | {"temperature": 0, "max_new_tokens": 24}), api_name="/chat")
    updates = list(job)
    assert len(updates) >= 2, updates  # streamed, not one final message
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(updates))
    assert updates[-1] == job.result() and job.result()

    # The row is in the SQLite file, with the hash of the exact terms shown.
    new = rows(running_app)[count:]
    assert len(new) == 1
    identity, terms_id, sha, name, email, affiliation, purpose, accepted_at, agent = new[0]
    terms = Terms.load()
    assert (terms_id, sha) == (terms.id, terms.sha256)
    assert (name, email, affiliation, purpose) == ("山田 太郎", "taro@example.jp", "国立情報学研究所", "研究")
    assert identity == identity_of(running_app, receipt) and accepted_at and agent is not None
    assert client.session_hash not in identity  # the session hash is never an identity


def test_a_second_client_is_still_refused(running_app: RunningApp, accepted) -> None:
    accepted.predict("こんにちは", **GOOD, api_name="/chat")  # the first one may chat
    other = running_app.client()
    with pytest.raises(AppError, match="Accept the current terms"):
        other.predict("こんにちは", **GOOD, api_name="/chat")


def test_multi_turn_history_through_the_api(running_app: RunningApp, accepted) -> None:
    history = [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "はい"}]
    greedy = GOOD | {"temperature": 0, "max_new_tokens": 24}
    with_history = accepted.predict("続けて", **(greedy | {"history": history}), api_name="/chat")
    without = accepted.predict("続けて", **greedy, api_name="/chat")
    assert with_history and with_history != without  # the earlier turns reached the prompt


@pytest.mark.parametrize(
    ("message", "change", "expected"),
    [
        ("", {}, "Please type a message"),
        ("   \n ", {}, "Please type a message"),
        ("長" * 4001, {}, "too long"),
        ("こんにちは", {"top_p": 1.5}, "top_p must be in"),
        ("こんにちは", {"temperature": -1}, "temperature must be in"),
        ("こんにちは", {"max_new_tokens": 0}, "max_new_tokens must be in"),
        ("こんにちは", {"max_new_tokens": 10**9}, "max_new_tokens must be in"),
        ("こんにちは", {"model_id": "gpt-4"}, "There is no model 'gpt-4'"),
        ("こんにちは", {"history": [{"role": "system", "content": "x"}]}, "history must be"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_generated(
    running_app: RunningApp, accepted, message: str, change: dict, expected: str
) -> None:
    before = (running_app.backend.calls, running_app.backend.chunks)
    with pytest.raises(AppError, match=expected) as err:
        accepted.predict(message, **(GOOD | change), api_name="/chat")
    assert " / " in str(err.value)  # Japanese first, then English
    assert (running_app.backend.calls, running_app.backend.chunks) == before
    # The app keeps serving.
    assert accepted.predict("こんにちは", **GOOD, api_name="/chat") is not None


def test_nan_is_refused(running_app: RunningApp, accepted) -> None:
    """NaN is not JSON, so no well-behaved client can send it; a raw request can."""
    before = (running_app.backend.calls, running_app.backend.chunks)
    data = ["こんにちは", "tiny-llama", math.nan, 0.95, 0, 1.05, 16, None, None, None]
    result = call(running_app, "chat", data, accepted.session_hash)
    assert result["success"] is False
    assert "temperature must be in" in result["output"]["error"]
    assert (running_app.backend.calls, running_app.backend.chunks) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "氏名"),
        ({"name": "   "}, "氏名"),
        ({"email": "not-an-email"}, "メールアドレス"),
        ({"email": "a@b"}, "メールアドレス"),
        ({"affiliation": ""}, "所属"),
        ({"purpose": ""}, "利用目的"),
        ({"agree": False}, "同意"),
        ({"name": "x" * 201}, "氏名"),
        ({"name": "bad\x00name"}, "氏名"),
    ],
)
def test_bad_form_records_nothing(running_app: RunningApp, change: dict, field: str) -> None:
    client = running_app.client()
    count = len(rows(running_app))
    with pytest.raises(AppError, match=field):
        client.predict(**(FORM | change), api_name="/accept_terms")
    assert len(rows(running_app)) == count
    with pytest.raises(AppError, match="Accept the current terms"):
        client.predict("こんにちは", **GOOD, api_name="/chat")


def test_html_in_the_form_is_stored_as_given(running_app: RunningApp) -> None:
    client = running_app.client()
    name = "<img src=x onerror=alert(1)>'; DROP TABLE acceptances; --"
    client.predict(**(FORM | {"name": name}), api_name="/accept_terms")
    assert rows(running_app)[-1][3] == name


def test_api_documents_both_endpoints(running_app: RunningApp) -> None:
    api = running_app.client().view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/accept_terms"]["parameters"]] == [*FORM, "receipt"]
    assert [p["parameter_name"] for p in api["/chat"]["parameters"]] == ["message", *GOOD, "history", "receipt", "seed"]
    assert set(api) == {
        "/accept_terms",
        "/withdraw_consent",
        "/acknowledge_licence",
        "/chat",
        "/admin_events",
        "/admin_export",
        "/admin_erase",
        "/admin_feedback",
        "/admin_arena",
        "/models",
    }


def test_page_serves_the_terms_verbatim(running_app: RunningApp) -> None:
    config = httpx.get(running_app.url.rstrip("/") + "/config", timeout=10).json()
    html_values = [c["props"].get("value", "") for c in config["components"] if c.get("type") == "html"]
    terms = Terms.load()
    import html as html_lib

    assert any(
        html_lib.unescape(v).endswith(terms.ja + "</div>") or terms.ja in html_lib.unescape(v) for v in html_values
    )
    assert any(terms.en in html_lib.unescape(v) for v in html_values)


def test_no_event_keeps_a_loading_status_on_a_layout(running_app: RunningApp) -> None:
    """The browser copies the value of everything inside each component that has a loading status, at every
    status message of every event (each streamed update too): a tab or column there meant the whole page,
    copied at each update of a reply. Events with hidden progress keep no status at all."""
    config = httpx.get(running_app.url.rstrip("/") + "/config", timeout=10).json()
    containers: set[int] = set()

    def walk(node: dict) -> None:
        if "children" in node:
            containers.add(node["id"])
            for child in node["children"]:
                walk(child)

    walk(config["layout"])
    assert len(containers) > 10  # the page's tabs, columns and groups were found
    events = [d for d in config["dependencies"] if d["outputs"]]
    assert any(set(d["outputs"]) & containers for d in events)  # some events do change layouts
    for d in events:
        targets = d["show_progress_on"]
        assert targets is not None, d["api_name"]  # not all outputs, by default
        assert not set(targets) & containers, d["api_name"]
        if d["show_progress"] == "hidden":
            assert targets == [], d["api_name"]


def test_readme_api_example_runs(running_app: RunningApp, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example, pointed at this app and a tiny model, streams a reply."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## API.*?```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace("http://127.0.0.1:7860/", running_app.url).replace("llm-jp-3.1-1.8b-instruct4", "tiny-llama")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) >= 2


def test_cancel_stops_generation(running_app: RunningApp, accepted) -> None:
    """Cancelling a /chat job ends generation on the server: the worker thread exits, no more tokens."""
    # Uncancelled, this runs to about 2,000 tokens (1.3 s here); cancel comes after the first update.
    long = GOOD | {"model_id": "tiny-gpt2", "temperature": 0, "max_new_tokens": 2048}
    before = running_app.backend.chunks
    job = accepted.submit("こんにちは", **long, api_name="/chat")
    deadline = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.outputs(), "no update arrived"
    job.cancel()
    stopped_at = time.monotonic()
    while running_app.backend.active and time.monotonic() - stopped_at < 5:
        time.sleep(0.01)
    assert not running_app.backend.active, "generation went on after cancel"
    chunks = running_app.backend.chunks
    time.sleep(0.3)
    assert running_app.backend.chunks == chunks
    assert chunks - before < 500, f"{chunks - before} chunks: generation was not stopped early"


def test_concurrent_visitors_never_get_each_others_tokens(running_app: RunningApp, accepted) -> None:
    """Greedy replies to different prompts, asked at once, equal the replies asked one by one."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["富士山", "東京大学", "自然言語処理", "こんにちは"]
    request = GOOD | {"temperature": 0, "max_new_tokens": 40}
    alone = [accepted.predict(p, **request, api_name="/chat") for p in prompts]
    clients = [running_app.client() for _ in prompts]  # four visitors, each with their own consent
    for client in clients:
        client.predict(**FORM, api_name="/accept_terms")
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda cp: cp[0].predict(cp[1], **request, api_name="/chat"),
                                 zip(clients, prompts, strict=True)))  # fmt: skip
    assert together == alone
    assert len(set(alone)) == len(alone)  # the prompts really lead to different replies


def test_a_client_going_away_stops_generation(running_app: RunningApp) -> None:
    """Closing the HTTP stream mid-reply (a closed tab, a dropped connection) ends generation on the server."""
    client = running_app.client()
    _, receipt = client.predict(**FORM, api_name="/accept_terms")
    base = running_app.url.rstrip("/") + "/gradio_api/call/chat"
    data = ["こんにちは", "tiny-gpt2", 0.0, 0.95, 0, 1.0, 2048, None, receipt]
    before = running_app.backend.chunks
    with httpx.Client(timeout=30) as http:
        event = http.post(base, json={"data": data}).json()["event_id"]
        with http.stream("GET", f"{base}/{event}") as events:
            for line in events.iter_lines():
                if line.startswith("data:") and line != "data: null":
                    break  # one update, then hang up
    gone = time.monotonic()
    while running_app.backend.active and time.monotonic() - gone < 5:
        time.sleep(0.01)
    assert not running_app.backend.active, "generation went on after the client left"
    assert running_app.backend.chunks - before < 500  # about 2,000 had it run to the end
