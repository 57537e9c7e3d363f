"""Engine processes: on a GPU, each local model is served by a vLLM server the app starts and watches.

vLLM cannot live in the app's environment (its releases pin their own torch,
a narrow transformers range and pillow >= 13, which gradio 6 refuses), so it
runs from an environment of its own (``.venv-vllm``, made by ``./dev run`` on
a GPU machine) as one OpenAI-compatible server process per model, on a free
loopback port. Generation then goes through the remote backend
(``inference.servers.remote``) against that port, so prompts, sampling and Stop work
exactly as for a remote vLLM.

The supervision here: a model's engine starts on its first request (or at
preload) while the visitor sees ``Starting``; it must answer ``/health``
within ``start_timeout_s`` or it is stopped and reported. When an engine
exits, the visitors mid-reply get a bilingual message and it is started
again (at once if it had been serving, else on the next request); other
models' engines are separate processes and go on. At most ``max_loaded``
engines run; room is made by stopping the least recently used idle one.
Engines are stopped with their whole process group at exit, and die with the
app even when it is killed (``PR_SET_PDEATHSIG``). Their output is logged
here line by line, prefixed with the model's id.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import logging
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from inference.errors import ModelUnavailable
from inference.progress import Outcome, Starting, Status
from inference.prompts import Message, Prompt
from inference.registry import Endpoint, ModelSpec, Server
from inference.sampling import SamplingOptions

log = logging.getLogger(__name__)

# ``vllm serve``, run by the engine environment's Python. Placeholders are filled per model.
VLLM_COMMAND = (
    "{python} -m vllm.entrypoints.cli.main serve {model} --served-model-name {name} --host 127.0.0.1 "
    "--port {port} --dtype {dtype} --max-model-len {context} --gpu-memory-utilization {gpu_share}"
)
PLACEHOLDERS = ("python", "model", "name", "port", "dtype", "context", "gpu_share")
HEALTH_POLL_S = 0.25
STOP_GRACE_S = 15.0


class EngineFailed(ModelUnavailable):
    """An engine process could not be started, or did not become ready in time."""

    def __init__(self, label: str, why_ja: str, why_en: str) -> None:
        super().__init__(
            f"{label} の推論エンジンを起動できませんでした({why_ja})。しばらくしてからもう一度お試しください。"
            "続く場合は管理者に連絡してください。",
            f"The inference engine for {label} could not be started ({why_en}). Please try again shortly; "
            "if it persists, tell the administrator.",
        )


class EngineLost(ModelUnavailable):
    """The engine process ended while a reply was being written."""

    def __init__(self, label: str) -> None:
        super().__init__(
            f"{label} の推論エンジンが停止したため、この返答は途中で終わりました。エンジンを再起動しています。"
            "少し待ってからもう一度送信してください。",
            f"The inference engine for {label} stopped, so this reply was cut short. It is being restarted: "
            "please wait a moment and send again.",
        )


class EnginesBusy(ModelUnavailable):
    """Every running engine has requests, and no other may start."""

    def __init__(self, label: str, max_loaded: int, busy: Sequence[str]) -> None:
        names = ", ".join(busy)
        super().__init__(
            f"{label} を起動できません: 同時に動かせるモデル {max_loaded} 個がすべて使用中です({names})。"
            "しばらくしてからもう一度お試しください。",
            f"Cannot start {label}: all {max_loaded} models that may run at once are in use ({names}). "
            "Please try again shortly.",
        )


# -- which engine ----------------------------------------------------------------------


def gpu_present() -> bool:
    """An NVIDIA GPU with its driver, found without importing torch (the page is served before torch loads)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def has_vllm(python: str | Path) -> bool:
    """Whether ``python`` (the engine environment's) can import vLLM."""
    if not Path(python).is_file():
        return False
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose(setting: str, *, python: str | Path, custom_command: bool) -> Server | None:
    """The engine for local models: ``Server.VLLM`` for engine processes, None for this process's loop.

    ``auto`` picks vLLM when a GPU and the engine environment are found, and
    never on ZeroGPU, where the GPU exists only inside ``@spaces.GPU`` calls.
    """
    if setting == "transformers":
        return None
    if setting == "vllm":
        if not custom_command and not has_vllm(python):
            raise ValueError(
                f"LLMJP_ENGINE=vllm, but {python} cannot import vllm: run ./dev run on the GPU machine "
                "(it makes the engine environment), or set LLMJP_ENGINE_PYTHON"
            )
        return Server.VLLM
    if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true") or not gpu_present():
        return None
    if custom_command or has_vllm(python):
        return Server.VLLM
    log.info("a GPU is present but %s has no vLLM: serving with transformers in this process", python)
    return None


def gpu_shares(weights: Mapping[str, int], *, total: float, max_loaded: int) -> dict[str, float]:
    """Each model's share of GPU memory (vLLM's ``--gpu-memory-utilization``).

    Any ``max_loaded`` of them together stay within ``total``: a model gets
    ``total`` times its weights over its weights plus the largest weights it
    may run beside, so the KV cache of each is in proportion to its size.
    """
    shares = {}
    for model_id, own in weights.items():
        others = sorted((w for m, w in weights.items() if m != model_id), reverse=True)[: max(max_loaded - 1, 0)]
        shares[model_id] = round(total * own / max(own + sum(others), 1), 3) if others else total
    return shares


# -- one engine process ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it (so the app) dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Spawner:
    """One long-lived thread starts every engine: ``PR_SET_PDEATHSIG`` fires when the starting thread ends,
    so it must be a thread that ends only with the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="engine-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def run(self, job: Callable[[], Any]) -> Any:
        future: Future = Future()
        self._jobs.put((job, future))
        return future.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.run(
        lambda: subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group: stopped whole, vLLM's workers included
            preexec_fn=_die_with_parent,  # prctl only; the thread that forks runs nothing else
        )
    )


@dataclass(frozen=True, kw_only=True)
class Launch:
    """How engine processes are started (from settings)."""

    command: str = VLLM_COMMAND
    """A command line with ``{python} {model} {name} {port} {dtype} {context} {gpu_share}``."""
    python: str = ".venv-vllm/bin/python"
    start_timeout_s: float = 900.0
    """vLLM loads the weights, profiles memory and captures CUDA graphs before it is healthy."""
    shares: Mapping[str, float] = field(default_factory=dict)
    """Per model id; 0.9 when unset."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the app's environment for the engines (the hub cache, the token)."""

    def argv(self, spec: ModelSpec, model: str, port: int) -> list[str]:
        values = {
            "python": self.python,
            "model": model,
            "name": spec.id,
            "port": str(port),
            "dtype": spec.dtype,
            "context": str(spec.context),
            "gpu_share": f"{self.shares.get(spec.id, 0.9):g}",
        }
        return [part.format(**values) for part in shlex.split(self.command)]


class Engine:
    """One model's server process: started, watched, restarted, stopped."""

    def __init__(self, spec: ModelSpec, launch: Launch) -> None:
        self.spec = spec
        self.model = ""
        """The weights' directory (or hub id) the engine loads; set before the first start."""
        self.revision = spec.revision
        self.source_lock = threading.Lock()
        self._launch = launch
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.healthy = False
        self.incarnation = 0
        """Counts starts: a reply that began under one incarnation and ends under another lost its engine."""
        self._started_at = 0.0
        self._stopping = False
        self.holds = 0
        self.last_used = time.monotonic()

    @property
    def served(self) -> ModelSpec:
        """The spec as the remote backend sees it: a vLLM server on this engine's port."""
        url = f"http://127.0.0.1:{self.port}/v1"
        endpoint = Endpoint(base_url=url, model=self.spec.id, server=Server.VLLM)
        return dataclasses.replace(self.spec, endpoint=endpoint, revision=self.revision)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start(self) -> None:
        """Called with the lock held."""
        self.port = _free_port()
        argv = self._launch.argv(self.spec, self.model, self.port)
        env = os.environ | dict(self._launch.env)
        self.healthy, self._stopping = False, False
        self.process = _spawn(argv, env)
        self.incarnation += 1
        self._started_at = time.monotonic()
        log.info("engine for %s starting (pid %s, port %s)", self.spec.id, self.process.pid, self.port)
        name = f"engine-{self.spec.id}-{self.incarnation}"
        threading.Thread(target=self._relay, args=(self.process,), name=f"{name}-log", daemon=True).start()
        threading.Thread(target=self._watch, args=(self.process,), name=f"{name}-watch", daemon=True).start()

    def _relay(self, process: subprocess.Popen[bytes]) -> None:
        """The engine's output, line by line, into the app's log under the model's id."""
        assert process.stdout is not None
        for raw in process.stdout:
            if line := raw.decode("utf-8", "replace").rstrip():
                log.info("[%s] %s", self.spec.id, line)

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            if self.process is not process or self._stopping:
                return
            was_serving = self.healthy
            self.healthy = False
            log.warning("engine for %s exited with code %s", self.spec.id, code)
            _kill_group(process)  # vLLM's workers, if any outlived it
            if was_serving:
                # It was serving: start it again now, so the next visitor finds it (nearly) ready.
                log.info("restarting the engine for %s", self.spec.id)
                try:
                    self._start()
                except OSError:
                    log.exception("restarting the engine for %s failed", self.spec.id)

    def ready(self, report: Callable[[Status], None], timeout: float) -> None:
        """Return once the engine answers ``/health``, starting it when it is not running."""
        with self._lock:
            if not self.alive():
                try:
                    self._start()
                except OSError as exc:
                    log.error("engine for %s: cannot run its command: %s", self.spec.id, exc)
                    raise EngineFailed(self.spec.label, "コマンドを実行できません", "its command cannot run") from exc
            if self.healthy:
                return
            process, started = self.process, self._started_at
        assert process is not None
        url = f"http://127.0.0.1:{self.port}/health"
        while True:
            with self._lock:
                if self.healthy and self.process is process:
                    return
            if (code := process.poll()) is not None:
                raise EngineFailed(self.spec.label, f"終了コード {code}", f"it exited with code {code}")
            waited = time.monotonic() - started
            if waited > timeout:
                log.error("engine for %s not healthy after %.0f s: stopping it", self.spec.id, waited)
                self.stop()
                raise EngineFailed(
                    self.spec.label, f"{timeout:.0f} 秒以内に準備できませんでした", f"not ready within {timeout:.0f} s"
                )
            report(Starting("vLLM" if self.spec.engine is Server.VLLM else str(self.spec.engine), waited))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    with self._lock:
                        if self.process is process:
                            self.healthy = True
                            log.info("engine for %s ready after %.1f s", self.spec.id, waited)
                    continue
            time.sleep(HEALTH_POLL_S)

    def lost(self, incarnation: int, *, wait: float = 0.0) -> bool:
        """Whether the process that began a reply under ``incarnation`` has ended (waiting up to ``wait`` s)."""
        process = self.process
        if self.incarnation != incarnation or process is None:
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
        return process.poll() is not None

    def stop(self) -> None:
        """Stop the process and its group: SIGTERM, then SIGKILL after a grace period."""
        with self._lock:
            process, self._stopping, self.healthy = self.process, True, False
        if process is None:
            return
        if process.poll() is None:
            log.info("stopping the engine for %s (pid %s)", self.spec.id, process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("engine for %s ignored SIGTERM: killing it", self.spec.id)
        _kill_group(process)
        process.wait()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the process's group (its leader's pid is the group's id)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


# -- the backend ---------------------------------------------------------------------------


_running: weakref.WeakSet[Engines] = weakref.WeakSet()


def close_all() -> None:
    """Stop every engine of this process (at exit; no process is left behind)."""
    for engines in list(_running):
        engines.close()


atexit.register(close_all)


class Engines:
    """The backend of models whose ``spec.engine`` is set: one engine process each, replies through
    the remote backend against its loopback port."""

    def __init__(
        self,
        launch: Launch,
        *,
        remote: Callable[[], Any],
        model_source: Callable[[ModelSpec, Callable[[Status], None]], tuple[str, str | None]],
        max_loaded: int = 1,
    ) -> None:
        self.launch = launch
        self._remote_factory = remote
        self._remote: Any = None
        self._model_source = model_source
        self.max_loaded = max_loaded
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        _running.add(self)

    @property
    def remote(self) -> Any:
        """The remote backend (built on first use: it imports transformers for the tokenizers)."""
        with self._lock:
            if self._remote is None:
                self._remote = self._remote_factory()
            return self._remote

    def engine(self, model_id: str) -> Engine | None:
        return self._engines.get(model_id)

    def is_loaded(self, model_id: str) -> bool:
        """Whether the model's engine is running and ready."""
        engine = self._engines.get(model_id)
        return bool(engine and engine.healthy and engine.alive())

    def loaded_ids(self) -> list[str]:
        return [m for m in list(self._engines) if self.is_loaded(m)]

    def _hold(self, spec: ModelSpec) -> Engine:
        """The model's engine, held for one request; an idle one is stopped to make room for it."""
        evicted: list[Engine] = []
        with self._lock:
            engine = self._engines.get(spec.id)
            if engine is None:
                while len(self._engines) >= self.max_loaded:
                    idle = [e for e in self._engines.values() if e.holds == 0]
                    if not idle:
                        raise EnginesBusy(spec.label, self.max_loaded, [e.spec.label for e in self._engines.values()])
                    oldest = min(idle, key=lambda e: e.last_used)
                    evicted.append(self._engines.pop(oldest.spec.id))
                engine = self._engines[spec.id] = Engine(spec, self.launch)
            engine.holds += 1
            engine.last_used = time.monotonic()
        for old in evicted:
            log.info("unloading %s to make room for %s", old.spec.id, spec.id)
            old.stop()
        return engine

    def _let_go(self, engine: Engine) -> None:
        with self._lock:
            engine.holds -= 1
            engine.last_used = time.monotonic()

    def _ready(self, engine: Engine, report: Callable[[Status], None] | None) -> None:
        report = report or (lambda _: None)
        with engine.source_lock:  # visitors arriving together wait for the same download
            if not engine.model:
                # A download (the visitor sees its bytes) happens here, before the engine starts.
                engine.model, revision = self._model_source(engine.spec, report)
                engine.revision = revision or engine.revision
        engine.ready(report, self.launch.start_timeout_s)

    def load(self, spec: ModelSpec, report: Callable[[Status], None] | None = None) -> None:
        """Start the model's engine and wait until it is ready (a preload)."""
        engine = self._hold(spec)
        try:
            self._ready(engine, report)
        finally:
            self._let_go(engine)

    def unload(self, model_id: str) -> None:
        """Stop the model's engine (its requests then end with ``EngineLost``)."""
        with self._lock:
            engine = self._engines.pop(model_id, None)
        if engine is not None:
            engine.stop()

    def close(self) -> None:
        """Stop every engine."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.stop()

    def prepare(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        *,
        report: Callable[[Status], None] | None = None,
    ) -> Prompt:
        """Have the model's engine ready (started on first use), then render the prompt; held until ``release``."""
        engine = self._hold(spec)
        try:
            self._ready(engine, report)
            return self.remote.prepare(engine.served, messages, options)
        except BaseException:
            self._let_go(engine)
            raise

    def release(self, spec: ModelSpec) -> None:
        if engine := self._engines.get(spec.id):
            self._let_go(engine)

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message] | Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        report: Callable[[Status], None] | None = None,
        make_room: threading.Event | None = None,
    ) -> Outcome:
        """Stream the reply from the model's engine; a reply whose engine ended raises ``EngineLost``.

        ``make_room`` is not acted on: the engine batches, and its places are its own to share.
        """
        engine = self._engines.get(spec.id)
        if engine is None or not engine.alive():
            # Stopped between prepare and its turn (unloaded, or it exited): nothing was written yet.
            raise EngineLost(spec.label)
        incarnation = engine.incarnation
        try:
            outcome = self.remote.generate(engine.served, messages, options, emit, stop)
        except Exception as exc:
            # A killed server cuts the stream; the process is seen gone a moment later.
            if engine.lost(incarnation, wait=2.0):
                log.warning("engine for %s ended during a reply", spec.id)
                raise EngineLost(spec.label) from exc
            raise
        if outcome.finish_reason != "cancelled" and engine.lost(incarnation):
            raise EngineLost(spec.label)
        return outcome
