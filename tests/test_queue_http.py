"""Several visitors at once over HTTP: a lane as wide as the batch, a bounded queue, a clear "busy" past it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError

from tests.conftest import CountingBackend, RunningApp, launch
from tests.test_app_http import FORM, GOOD


class Held:
    """The real backend, held at the start of each reply until the test lets go.

    It keeps the model busy for exactly as long as a test needs, with no
    timing guesswork; stop still ends a held reply.
    """

    def __init__(self, inner: CountingBackend) -> None:
        self.inner = inner
        self.go = threading.Event()
        self.entered = threading.Semaphore(0)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # prepare, release

    def generate(self, spec, messages, options, emit, stop, **kwargs) -> object:
        self.entered.release()
        while not self.go.wait(0.01):
            if stop.is_set():
                return None
        return self.inner.generate(spec, messages, options, emit, stop, **kwargs)


@pytest.fixture
def held_app(tmp_path: Path, models_dir: Path) -> Iterator[tuple[RunningApp, Held]]:
    from webapp.settings import Settings

    holder: list[Held] = []

    def wrap(backend: CountingBackend) -> Held:
        holder.append(Held(backend))
        return holder[0]

    # One request at a time per model (no batching), so that a second one queues.
    settings = Settings(data_dir=tmp_path / "app", models="tiny", hub_offline=True, max_queue=1, max_batch=1)
    app = launch(settings, models_dir, wrap=wrap)
    try:
        yield app, holder[0]
    finally:
        holder[0].go.set()
        app.demo.close()


def visitor(app: RunningApp):
    client = app.client()
    client.predict(**FORM, api_name="/accept_terms")
    return client


def test_past_the_bound_visitors_are_told_it_is_busy_and_nothing_runs(held_app) -> None:
    app, held = held_app
    a, b, c = visitor(app), visitor(app), visitor(app)
    options = GOOD | {"temperature": 0, "max_new_tokens": 8}

    job_a = a.submit("一人目", **options, api_name="/chat")
    assert held.entered.acquire(timeout=30), "the first reply never started"
    job_b = b.submit("二人目", **options, api_name="/chat")
    time.sleep(1.0)  # B passes the gate and takes the one waiting place
    assert not held.entered.acquire(timeout=0), "B ran while A held the model"

    started = time.monotonic()
    with pytest.raises(AppError, match=r"混み合っています.*busy"):
        c.submit("三人目", **options, api_name="/chat").result(timeout=10)
    assert time.monotonic() - started < 10  # refused on arrival, not after waiting
    assert app.backend.calls == 0  # A is held before generating; C never reached the model

    held.go.set()
    reply_a, reply_b = job_a.result(timeout=60), job_b.result(timeout=60)
    assert reply_a and reply_b
    assert app.backend.calls == 2
    # The queue has drained: the refused visitor is served now.
    assert c.predict("三人目", **options, api_name="/chat")
    assert app.backend.calls == 3


def test_a_waiting_visitor_who_leaves_frees_the_place(held_app) -> None:
    app, held = held_app
    a, b, c = visitor(app), visitor(app), visitor(app)
    options = GOOD | {"temperature": 0, "max_new_tokens": 8}

    job_a = a.submit("一人目", **options, api_name="/chat")
    assert held.entered.acquire(timeout=30)
    job_b = b.submit("二人目", **options, api_name="/chat")
    time.sleep(1.0)
    job_b.cancel()  # B gives up while waiting
    time.sleep(1.0)
    job_c = c.submit("三人目", **options, api_name="/chat")  # takes B's place instead of being refused
    held.go.set()
    assert job_a.result(timeout=60) and job_c.result(timeout=60)
    assert app.backend.calls == 2  # A and C; B never ran
