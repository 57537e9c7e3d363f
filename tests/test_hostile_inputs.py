"""Every public endpoint against a table of hostile inputs (tests/data/hostile_inputs.json), over raw HTTP.

Each case gives a clear bilingual error and stores nothing, or a normal reply;
the server keeps serving throughout.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, RunningApp
from tests.hostile import call, error_of, event_count, is_clear_error, parameters
from webapp.receipts import Receipt, Receipts

TABLE = json.loads((Path(__file__).parent / "data" / "hostile_inputs.json").read_text(encoding="utf-8"))
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


@pytest.mark.parametrize(("endpoint", "case"), _cases())
def test_hostile_input(running_app: RunningApp, consenting: str, endpoint: str, case: dict) -> None:
    spec = TABLE["endpoints"][endpoint]
    values = copy.deepcopy(spec["defaults"]) | case["set"]
    names = parameters(running_app, endpoint)
    data = [_fill(values.get(name), running_app) for name in names]
    # Withdrawal and acceptance come from fresh sessions (a consenting one would change state or be deduplicated).
    session = consenting if endpoint in ("chat", "acknowledge_licence") else uuid.uuid4().hex
    before = event_count(running_app)
    result = call(running_app, endpoint, data, session)
    error = error_of(result)
    if case["expect"] == "error":
        assert error is not None, f"accepted: {case['case']}"
        assert is_clear_error(error), error
        assert event_count(running_app) == before, "an error must store nothing"
    else:
        assert error is None, error
    # The app keeps serving: a normal chat still streams.
    ok = call(running_app, "chat", ["はい", "tiny-llama", 0.0, 0.95, 0, 1.0, 2, None, None, None], consenting)
    assert error_of(ok) is None
