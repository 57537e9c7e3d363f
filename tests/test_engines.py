"""Engine processes, supervised for real: a stand-in OpenAI server (``engine_standin.py``) takes vLLM's place.

vLLM needs a GPU and cannot run here; everything around it does. The stand-in
is started, health-checked, killed, restarted and stopped by the same code
that runs ``vllm serve``, and the app's remote backend streams from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from inference import Inference, Registry, SamplingOptions
from inference.local.tiny import ensure
from inference.progress import Finished, Starting
from inference.registry import TINY_MODELS, Architecture, Server
from inference.servers.engines import EngineFailed, EngineLost, Engines, EnginesBusy, Launch, choose, gpu_shares
from inference.servers.remote import RemoteBackend
from tests.conftest import free_port
from tests.engine_standin import PIECES

STANDIN = Path(__file__).with_name("engine_standin.py")
ROOT = Path(__file__).resolve().parents[1]
SPECS = {s.id: dataclasses.replace(s, engine=Server.VLLM) for s in TINY_MODELS if s.id in ("tiny-llama", "tiny-gpt2")}
OPTIONS = SamplingOptions(temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.05, max_new_tokens=40)


def standin_command(*flags: str) -> str:
    return f"{{python}} {STANDIN} --name {{name}} --port {{port}} --model {{model}} {' '.join(flags)}"


class NoLocalModels:
    """Every model in these tests has an engine: this process must generate nothing."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the local backend was asked for {name}")


def make_engines(models_dir: Path, *flags: str, max_loaded: int = 2, timeout: float = 30.0) -> Engines:
    def source(spec, report) -> tuple[str, None]:
        return str(ensure(Architecture(spec.source), models_dir)), None

    launch = Launch(command=standin_command(*flags), python=sys.executable, start_timeout_s=timeout)
    return Engines(
        launch,
        remote=lambda: RemoteBackend(offline=True, tokenizer_source=lambda s: source(s, None)[0]),
        model_source=source,
        max_loaded=max_loaded,
    )


@pytest.fixture
def engines(models_dir: Path) -> Iterator[Engines]:
    engines = make_engines(models_dir, "--rate 100 --start-delay 0.5")
    try:
        yield engines
    finally:
        engines.close()


def inference_over(engines: Engines) -> Inference:
    return Inference(Registry.of(SPECS.values()), NoLocalModels(), engines=engines)  # type: ignore[arg-type]


class Reply:
    def __init__(self) -> None:
        self.text = ""
        self.statuses: list[object] = []
        self.finished: Finished | None = None
        self.error: BaseException | None = None


async def reply(
    inference: Inference,
    model_id: str,
    options: SamplingOptions = OPTIONS,
    *,
    on_text=None,
    stop: threading.Event | None = None,
) -> Reply:
    out = Reply()
    try:
        async for item in inference.stream(model_id, [], "富士山について教えて", options, stop=stop):
            if isinstance(item, str):
                out.text += item
                if on_text:
                    on_text(out)
            elif isinstance(item, Finished):
                out.finished = item
            else:
                out.statuses.append(item)
    except Exception as exc:
        out.error = exc
    return out


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` has ended (reaped, or a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_started_on_first_use_then_a_streamed_reply(engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    """The visitor sees the engine starting; the reply streams; its statistics are the server's usage."""
    caplog.set_level(logging.INFO, logger="inference.servers.engines")
    inference = inference_over(engines)
    assert not engines.is_loaded("tiny-llama")
    first = asyncio.run(reply(inference, "tiny-llama"))
    assert first.error is None, first.error
    assert any(isinstance(s, Starting) and s.engine == "vLLM" for s in first.statuses)
    assert first.text and set(first.text) <= set("".join(PIECES))
    # 40 pieces of one to three characters: the server's count, not a re-tokenising of the text.
    assert first.finished is not None and first.finished.completion_tokens == 40
    assert first.finished.finish_reason == "length"
    assert engines.is_loaded("tiny-llama")
    pid = engines.engine("tiny-llama").pid
    again = asyncio.run(reply(inference, "tiny-llama"))
    assert again.error is None and not any(isinstance(s, Starting) for s in again.statuses)
    assert engines.engine("tiny-llama").pid == pid  # the same process served both
    # The engine's own output is in the app's log, under the model's id.
    assert any(r.getMessage().startswith("[tiny-llama] stand-in engine serving") for r in caplog.records)


def test_sampling_reaches_the_engine_and_stop_cancels_there(engines: Engines) -> None:
    """The stand-in refuses any field vLLM lacks; a seed repeats a reply; Stop ends the request on the server."""
    inference = inference_over(engines)
    seeded = OPTIONS.model_copy(update={"seed": 7})
    one, two = (asyncio.run(reply(inference, "tiny-llama", seeded)) for _ in range(2))
    other = asyncio.run(reply(inference, "tiny-llama", OPTIONS.model_copy(update={"seed": 8})))
    assert one.error is None and one.text == two.text != other.text

    stop = threading.Event()
    long = OPTIONS.model_copy(update={"max_new_tokens": 2000})
    stopped = asyncio.run(reply(inference, "tiny-llama", long, on_text=lambda r: stop.set(), stop=stop))
    assert stopped.finished is not None and stopped.finished.finish_reason == "cancelled"
    stats = f"http://127.0.0.1:{engines.engine('tiny-llama').port}/stats"
    deadline = time.monotonic() + 5
    while httpx.get(stats).json()["cancelled"] < 1:
        assert time.monotonic() < deadline, httpx.get(stats).json()
        time.sleep(0.05)
    assert httpx.get(stats).json()["running"] == 0


def test_kill_9_mid_reply_tells_the_visitor_and_the_engine_comes_back(engines: Engines) -> None:
    """The visitor mid-reply gets the bilingual message; the other model's visitor is not touched."""
    inference = inference_over(engines)
    long = OPTIONS.model_copy(update={"max_new_tokens": 300})  # 3 s at 100 tok/s

    async def both() -> tuple[Reply, Reply]:
        killed = False

        def kill(r: Reply) -> None:
            nonlocal killed
            if not killed and len(r.text) > 5:
                killed = True
                os.kill(engines.engine("tiny-llama").pid, signal.SIGKILL)

        return await asyncio.gather(
            reply(inference, "tiny-llama", long, on_text=kill), reply(inference, "tiny-gpt2", long)
        )

    victim, bystander = asyncio.run(both())
    assert isinstance(victim.error, EngineLost), victim.error
    assert "停止" in victim.error.ja and "stopped" in victim.error.en
    assert victim.error.ja in str(victim.error) and str(victim.error).index(victim.error.ja) == 0  # Japanese first
    assert bystander.error is None and bystander.finished is not None
    assert bystander.finished.completion_tokens == 300
    # Two models, two processes.
    assert engines.engine("tiny-llama").pid != engines.engine("tiny-gpt2").pid
    after = asyncio.run(reply(inference, "tiny-llama"))
    assert after.error is None and after.finished is not None and after.finished.completion_tokens == 40


def test_unloading_stops_the_engine_and_a_busy_one_is_kept(models_dir: Path) -> None:
    """LLMJP_MAX_LOADED_MODELS=1: the next model's engine replaces an idle one, never a busy one."""
    engines = make_engines(models_dir, "--rate 100", max_loaded=1)
    try:
        inference = inference_over(engines)
        assert asyncio.run(reply(inference, "tiny-llama")).error is None
        llama = engines.engine("tiny-llama").pid
        assert asyncio.run(reply(inference, "tiny-gpt2")).error is None
        assert gone(llama, within=1) and not engines.is_loaded("tiny-llama")
        assert engines.loaded_ids() == ["tiny-gpt2"]

        async def overlapping() -> tuple[Reply, Reply]:
            long = OPTIONS.model_copy(update={"max_new_tokens": 200})
            busy = asyncio.ensure_future(reply(inference, "tiny-gpt2", long))
            await asyncio.sleep(0.5)
            refused = await reply(inference, "tiny-llama")
            return await busy, refused

        busy, refused = asyncio.run(overlapping())
        assert busy.error is None and busy.finished.completion_tokens == 200
        assert isinstance(refused.error, EnginesBusy) and "使用中" in refused.error.ja
    finally:
        engines.close()


@pytest.mark.parametrize(
    ("flags", "why"),
    [("--never-healthy", "not ready within 3 s"), ("--exit-at-start 3", "exited with code 3")],
)
def test_an_engine_that_does_not_start_is_reported_within_its_bound(models_dir: Path, flags: str, why: str) -> None:
    engines = make_engines(models_dir, flags, timeout=3.0)
    try:
        started = time.monotonic()
        failed = asyncio.run(reply(inference_over(engines), "tiny-llama"))
        assert isinstance(failed.error, EngineFailed) and why in failed.error.en, failed.error
        assert time.monotonic() - started < 3.0 + 5.0
        assert gone(engines.engine("tiny-llama").pid, within=1)  # not left running
    finally:
        engines.close()


def test_the_engine_choice() -> None:
    """auto picks vLLM only with a GPU (none here); shares of GPU memory keep any loaded pair within the total."""
    assert choose("auto", python=sys.executable, custom_command=True) is None  # no GPU on this machine
    assert choose("transformers", python=sys.executable, custom_command=True) is None
    assert choose("vllm", python=sys.executable, custom_command=True) is Server.VLLM
    with pytest.raises(ValueError, match="cannot import vllm"):
        choose("vllm", python=sys.executable, custom_command=False)  # the app's environment has no vLLM
    weights = {"1.8b": 3_600, "13b": 27_500, "tiny": 1}
    shares = gpu_shares(weights, total=0.9, max_loaded=2)
    assert shares["1.8b"] + shares["13b"] <= 0.9 + 1e-9
    assert shares["13b"] > 7 * shares["1.8b"]
    assert gpu_shares(weights, total=0.9, max_loaded=1) == dict.fromkeys(weights, 0.9)


# -- the whole app ---------------------------------------------------------------------------


def _interruptible() -> None:
    """The app hears Ctrl-C as from a terminal: a test run started in the background (``./dev test &``, CI
    runners) inherits SIGINT ignored, and Python then never installs its handler in the app."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_app(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "LLMJP_DATA_DIR": str(tmp_path / "data"),
        "LLMJP_MODELS": "tiny",
        "LLMJP_ENGINE": "vllm",
        "LLMJP_ENGINE_PYTHON": sys.executable,
        "LLMJP_ENGINE_COMMAND": standin_command("--rate 200"),
        "LLMJP_PRELOAD": "tiny-llama",
        "LLMJP_WARM_UP_S": "0",
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "app.log").open("wb")  # read back when the app fails a check
    app = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_interruptible
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        assert app.poll() is None, "the app exited"
        assert time.monotonic() < deadline, "the app did not answer"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return app, url
        except httpx.TransportError:
            time.sleep(0.2)


def app_log(tmp_path: Path) -> str:
    """The end of the app's log, for a failure's message."""
    return (tmp_path / "app.log").read_text(encoding="utf-8", errors="replace")[-4000:]


def engine_processes(app: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [p for p in psutil.Process(app.pid).children(recursive=True) if str(STANDIN) in " ".join(p.cmdline())]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_the_app_serves_through_its_engine_and_leaves_no_process_behind(tmp_path: Path, how: signal.Signals) -> None:
    """/models shows the engine; /chat streams from it; stopping the app, even with kill -9, ends the engine."""
    from types import SimpleNamespace

    from tests.hostile import call, error_of, stream
    from tests.test_app_http import FORM

    app, url = start_app(tmp_path)
    try:
        # Raw requests rather than gradio_client, whose heartbeat stream (a line every 15 s) would hold the
        # interrupted server open for about ten seconds more: what is tested is the engine, not that wait.
        visitor, session = SimpleNamespace(url=url), "engine-visitor"

        def tiny() -> dict:
            (models,) = call(visitor, "models", [], session)["output"]["data"]  # type: ignore[arg-type]
            return next(m for m in models if m["id"] == "tiny-llama")

        deadline = time.monotonic() + 60
        while not (model := tiny())["loaded"]:
            assert time.monotonic() < deadline, "the preloaded engine never became ready:\n" + app_log(tmp_path)
            time.sleep(0.3)
        assert model["engine"] == "vllm"
        (engine,) = engine_processes(app)
        assert error_of(call(visitor, "accept_terms", [*FORM.values(), None], session)) is None  # type: ignore[arg-type]
        updates: list[str] = []
        data = ["富士山について教えて", "tiny-llama", 0.7, 0.95, 0, 1.0, 64, None, None, None]
        done, _ = stream(visitor, "chat", data, session, seen=lambda outputs: updates.append(outputs[0]))  # type: ignore[arg-type]
        assert error_of(done) is None
        assert len(updates) > 1 and set(updates[-1]) <= set("".join(PIECES))
        app.send_signal(how)
        app.wait(timeout=30)
        assert gone(engine.pid), f"engine {engine.pid} outlived the app ({how.name})"
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()


def test_the_note_and_the_status_name_the_engine() -> None:
    """Each reply's note says which engine wrote it; the waiting visitor reads that the engine is starting."""
    from webapp.chat.messages import note_body, status_text

    record = {
        "model_id": "tiny-llama",
        "engine": "vllm",
        "revision": None,
        "started_at": "2025-01-01T00:00:00",
        "sampling": OPTIONS.model_dump(),
    }
    assert "engine: vLLM" in note_body("en", record)
    assert "engine: transformers" in note_body("ja", record | {"engine": "transformers"})
    assert status_text("ja", Starting("vLLM", 12.3)) == "推論エンジン(vLLM)を起動しています(12 秒)"
    assert status_text("en", Starting("vLLM", 12.3)) == "Starting the vLLM engine (12 s)"
