"""Every public endpoint and every page event against a table of hostile inputs (tests/data/hostile_inputs.json),
over raw HTTP.

Each case gives a clear bilingual error and stores nothing, or a normal reply;
the server keeps serving throughout: after each chat case a one-token reply,
after any other a cheap queued event, and after the whole table a chat.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, RunningApp
from tests.hostile import call, error_of, event_count, is_clear_error, parameters, refusal_in
from webapp.gate.receipts import Receipt, Receipts

TABLE = json.loads((Path(__file__).parent / "data" / "hostile_inputs.json").read_text(encoding="utf-8"))
ONE_TOKEN = ["はい", "tiny-llama", 0.0, 0.95, 0, 1.0, 1, None]
FORM = {"name": "例 太郎", "email": "taro@example.com", "affiliation": "Example University", "purpose": "研究"}


def _cases() -> list[Any]:
    return [
        pytest.param(endpoint, case, id=f"{endpoint}: {case['case']}")
        for endpoint, spec in TABLE["endpoints"].items()
        for case in spec["cases"]
    ]


def test_the_table_has_forty_cases_per_endpoint() -> None:
    counts = {endpoint: len(spec["cases"]) for endpoint, spec in TABLE["endpoints"].items()}
    assert set(counts) == {
        "accept_terms", "chat", "withdraw_consent", "acknowledge_licence", "admin_events", "admin_export", "admin_erase",
    }  # fmt: skip
    assert min(counts.values()) >= 40, counts


@pytest.fixture(scope="module")
def consenting(running_app: RunningApp) -> str:
    """A session that has accepted the terms: chat cases reach the checks behind the gate."""
    client = running_app.client()
    client.predict(**FORM, agree=True, api_name="/accept_terms")
    return client.session_hash


def _fill(value: Any, app: RunningApp) -> Any:
    if isinstance(value, dict) and "$repeat" in value:
        return value["$repeat"] * value["times"]
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    secret = app.settings.server_secret()  # type: ignore[attr-defined]
    forged = Receipts(b"not-the-server-secret-0123456789abcdef", max_age_days=90).issue(
        Receipt("f" * 22, "llm-jp-3-172b-beta1-tou", "0" * 64)
    )
    genuine = Receipts(secret, max_age_days=90).issue(Receipt("g" * 22, "llm-jp-3-172b-beta1-tou", "0" * 64))
    return {
        "$ADMIN_TOKEN": ADMIN_TOKEN,
        "$ADMIN_TOKEN_PREFIX": ADMIN_TOKEN[:-1],
        "$ADMIN_TOKEN_SPACE": ADMIN_TOKEN + " ",
        "$FORGED_RECEIPT": forged,
        "$ALTERED_RECEIPT": genuine[:-3] + ("AAA" if not genuine.endswith("AAA") else "BBB"),
    }[value]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the whole table: its connections are reused from case to case."""
    with httpx.Client(timeout=60) as client:
        yield client


def still_serving(app: RunningApp, http: httpx.Client) -> None:
    """The app keeps serving: the queue runs a cheap event for a new session."""
    assert call(app, "page_load", ["tiny-llama", None, "", "ja"], uuid.uuid4().hex, http=http)["success"]


@pytest.mark.parametrize(("endpoint", "case"), _cases())
def test_hostile_input(running_app: RunningApp, consenting: str, http: httpx.Client, endpoint: str, case: dict) -> None:
    spec = TABLE["endpoints"][endpoint]
    values = copy.deepcopy(spec["defaults"]) | case["set"]
    names = parameters(running_app, endpoint)
    data = [_fill(values.get(name), running_app) for name in names]
    # Withdrawal and acceptance come from fresh sessions (a consenting one would change state or be deduplicated).
    session = consenting if endpoint in ("chat", "acknowledge_licence") else uuid.uuid4().hex
    before = event_count(running_app)
    result = call(running_app, endpoint, data, session, http=http)
    error = error_of(result)
    if case["expect"] == "error":
        assert error is not None, f"accepted: {case['case']}"
        assert is_clear_error(error), error
        assert event_count(running_app) == before, "an error must store nothing"
    else:
        assert error is None, error
    if endpoint == "chat":
        # What a hostile chat could break is the model's thread: the next one-token reply proves it serves.
        ok = call(running_app, "chat", [*ONE_TOKEN, None, None], consenting, http=http)
        assert error_of(ok) is None
    else:
        # The others touch no model: the server answering is what is left to prove (the queue is proved
        # after each page route below, and a whole chat after the table). The API's description is a few
        # milliseconds of the server's work; the page's config, asked for before, took 30.
        assert http.get(running_app.url.rstrip("/") + "/gradio_api/info").status_code == 200


# -- the page's own events, through every route -------------------------------------------------

KINDS = TABLE["page_kinds"]
KIND_OF = {
    "textbox": "text", "dropdown": "choice", "radio": "choice", "slider": "number", "checkbox": "flag",
    "chatbot": "conversation", "state": "state", "browserstate": "state",
}  # fmt: skip
ROUTES = ("queue/join", "run", "call", "api")
# Inputs with bounds of their own (``door_bound`` where the page builds them), not their kind's.
OWN_KIND = {"chat-list": "text", "llmjp-demo-chats": "kept_list"}


def kind_of(component: dict) -> str:
    """The table's kind for ``component``: its own, else its type's."""
    props = component.get("props", {})
    return OWN_KIND.get(props.get("elem_id") or props.get("storage_key") or "", KIND_OF[component["type"]])


def _page_events(url: str) -> list[tuple[str, int, list[dict]]]:
    """Every page event the server runs: its name, index and input components, from the page's own config."""
    config = httpx.get(url.rstrip("/") + "/config", timeout=10).json()
    components = {c["id"]: c for c in config["components"]}
    return [
        (d["api_name"], d["id"], [components[i] for i in d["inputs"]])
        for d in config["dependencies"]
        if str(d.get("api_name") or "").startswith("page_") and d.get("backend_fn")
    ]


def _value(value: Any) -> Any:
    """The table's value, with its '$' shorthands built."""
    if isinstance(value, dict) and "$repeat" in value:
        return value["$repeat"] * value["times"]
    if isinstance(value, dict) and "$nest" in value:
        nested: Any = "x"
        for _ in range(value["$nest"]):
            nested = [nested]
        return nested
    if isinstance(value, dict) and "$turns" in value:
        text = "あ" * value["chars"]
        return [
            {"role": ("user", "assistant")[i % 2], "metadata": None, "content": [{"text": text, "type": "text"}]}
            for i in range(value["$turns"])
        ]
    return value


def _default(component: dict) -> Any:
    """What the page itself sends for ``component`` when nothing is typed."""
    props = component.get("props", {})
    kind = kind_of(component) if component["type"] in KIND_OF else None
    if kind == "conversation":
        return []
    if kind == "text":
        return ""
    if kind == "flag":
        return bool(props.get("value"))
    return props.get("value")


class RawClient:
    """One kept-alive connection of the standard library's client for the whole table: three thousand requests a
    route, a third of them megabytes, cost the test run a fraction of what httpx's per-request work did."""

    def __init__(self, url: str) -> None:
        where = urllib.parse.urlsplit(url)
        self.connection = HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        # A response that closes the connection closes it here too; the next request opens a new one.
        self.connection.request("POST", path, body=body, headers={"content-type": "application/json"})
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


def _json(value: Any) -> bytes:
    # Escaped as JSON allows, so NaN and lone surrogates travel as a raw client sends them.
    return json.dumps(value).encode()


def test_the_table_covers_every_kind_of_input_the_page_has(running_app: RunningApp) -> None:
    components = [c for _, _, inputs in _page_events(running_app.url) for c in inputs]
    assert {c["type"] for c in components} <= set(KIND_OF), {c["type"] for c in components} - set(KIND_OF)
    assert {kind_of(c) for c in components} == set(KINDS)


@pytest.mark.parametrize("route", ROUTES)
def test_every_page_event_refuses_hostile_values_through_every_route(
    running_app: RunningApp, http: httpx.Client, route: str
) -> None:
    """Each hostile value on each input of each page event: refused before Gradio reads it, bilingual, nothing
    stored; the same event with the page's own values passes the door."""
    events = _page_events(running_app.url)
    assert len(events) >= 25, [name for name, _, _ in events]
    # Each value is encoded once; each request's body is put together from the encoded parts.
    encoded = {kind: [_json(_value(case["value"])) for case in cases] for kind, cases in KINDS.items()}
    raw = RawClient(running_app.url)
    before, tried = event_count(running_app), 0
    try:
        for name, index, inputs in events:
            defaults = [_json(_default(c)) for c in inputs]
            if route == "queue/join":
                path, tail = "/gradio_api/queue/join", f', "fn_index": {index}, "session_hash": "hostile"}}'.encode()
            else:
                path, tail = f"/gradio_api/{route}/{name}", b"}"
            for position, component in enumerate(inputs):
                kind = kind_of(component)
                for case, value in zip(KINDS[kind], encoded[kind], strict=True):
                    data = b", ".join([*defaults[:position], value, *defaults[position + 1 :]])
                    status, body = raw.post(path, b"".join([b'{"data": [', data, b"]", tail]))
                    tried += 1
                    where = f"{name} input {position} ({component['type']}): {case['case']} via {route}"
                    assert status in (413, 422), where
                    assert is_clear_error(refusal_in(body)), where
    finally:
        raw.close()
    assert event_count(running_app) == before, "a refusal must store nothing"
    if route == "queue/join":
        base = running_app.url.rstrip("/") + "/gradio_api"
        for name, index, inputs in events:  # the page's own values pass the door
            body = {"data": [_default(c) for c in inputs], "fn_index": index, "session_hash": uuid.uuid4().hex}
            assert http.post(f"{base}/queue/join", json=body).status_code == 200, name
    print(f"{route}: {tried} hostile values refused on {len(events)} page events")
    still_serving(running_app, http)


def test_a_reply_still_streams_after_the_whole_table(running_app: RunningApp, consenting: str) -> None:
    """Last in the file: after every case above, a whole chat still streams."""
    ok = call(running_app, "chat", ["はい", "tiny-llama", 0.0, 0.95, 0, 1.0, 2, None, None, None], consenting)
    assert error_of(ok) is None
