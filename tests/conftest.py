"""Shared fixtures: real tokenizers from ../shared, tiny real models, the real app over HTTP."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import webapp  # noqa: F401  # first: every later Gradio import in this process skips its stub writer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOKENIZERS = SHARED / "data" / "llm-jp-tokenizer"
SP_MODELS = {
    "ver3.0": TOKENIZERS / "models/ver3.0/llm-jp-tokenizer-100k.ver3.0b1.model",
    "ver3.1": TOKENIZERS / "models/ver3.1/llm-jp-tokenizer-100k.ver3.1.model",
    "ver2.1": TOKENIZERS / "models/ver2.1/code10k_en20k_ja30k.ver2.1.model",
}
CORPUS = Path(__file__).parent / "data" / "ja_corpus.txt"
ARTIFACTS = ROOT / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    """One thread per torch operation, in the test run and in every app and tool it starts (they inherit
    it), set before any test module imports torch. The tiny models gain nothing from a second thread, and
    the run's two workers share two cores with Chromium and the apps: torch's threads then wait at every
    operation for a thread the machine has not scheduled. Measured with a page's replies (tiny Llama, 64
    tokens each, in Chromium): the app's CPU per reply 1.3 s -> 0.46 s, Enter to Send 1.9 s -> 0.9 s."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The order ``./dev test`` hands the modules to its two workers in (``--no-loadscope-reorder``), each worker
# taking the next when it is done. The browser modules are one unit of work (``pytest_xdist_make_scheduler``),
# run one after another by one worker while the other runs the rest: two pages, two apps and two Chromiums at
# once made every module of a full run 15-20% slower. Then the slowest modules first (seconds of a full run
# with two workers: 67, 47, 40, ...), so that the run ends with short modules on both workers instead of one
# worker finishing a long one alone. The figures need not be exact; modules not named come last.
SLOWEST_FIRST = [
    "test_chat_browser", "test_chat_reach_browser", "test_history_browser", "test_compare_browser",
    "test_kept_browser", "test_browser",
    "test_hostile_inputs", "test_engines", "test_audit", "test_abuse_http", "test_app_http", "test_doors_http",
    "test_remote", "test_audit_live", "test_operator", "test_lazy", "test_audit_faults", "test_consent_http",
    "test_batching", "test_audit_chain",
]  # fmt: skip
assert all((Path(__file__).parent / f"{name}.py").exists() for name in SLOWEST_FIRST), "a module was renamed"


def is_browser_module(path: Path) -> bool:
    return path.stem.endswith("browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules in the order above, each module's tests kept together and in order."""
    misnamed = {i.path.name for i in items if is_browser_module(i.path) != bool(i.get_closest_marker("browser"))}
    assert not misnamed, f"browser tests live in modules named *browser.py, and only they: {misnamed}"
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile`` with the browser modules as one unit of work (see ``SLOWEST_FIRST``)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class BrowserModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "the browser modules" if is_browser_module(Path(scope)) else scope

    return BrowserModulesTogether(config, log)  # type: ignore[arg-type]


@pytest.fixture(scope="session", autouse=True)
def _one_tls_context() -> Iterator[None]:
    """Every httpx client of the run shares one default TLS context.

    httpx builds a context for each new client (and each ``httpx.get``/``post``, as gradio_client
    calls them), reading the system's 140-odd CA certificates: about 20 ms each, thousands of times
    a run, for connections that are all plain HTTP to 127.0.0.1. A context is safe to share.
    """
    from httpx._transports import default

    build = getattr(default, "create_ssl_context", None)
    if build is None:  # httpx moved it: the run is only slower
        yield
        return
    shared = build()

    def create_ssl_context(verify: object = True, cert: object = None, trust_env: bool = True) -> object:
        if verify is True and cert is None and trust_env:
            return shared
        return build(verify=verify, cert=cert, trust_env=trust_env)

    default.create_ssl_context = create_ssl_context  # type: ignore[assignment]
    try:
        yield
    finally:
        default.create_ssl_context = build


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's settings or reaches the hub."""
    for var in ("LLMJP_DATABASE_URL", "LLMJP_DEFAULT_MODEL", "LLMJP_MODELS", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLMJP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def japanese_lines() -> list[str]:
    """Japanese test lines: the corpus file plus every line of the real terms of use."""
    terms = (ROOT / "webapp/data/terms/llm-jp-3-172b-beta1-tou.ja.txt").read_text(encoding="utf-8")
    return CORPUS.read_text(encoding="utf-8").splitlines() + terms.splitlines()


@pytest.fixture(scope="session")
def real_tokenizers() -> dict[str, object]:
    """The real LLM-jp tokenizers, converted to fast tokenizers."""
    from inference.local.spm import from_sentencepiece

    missing = [str(p) for p in SP_MODELS.values() if not p.exists()]
    assert not missing, f"the shared LLM-jp tokenizers are missing: {missing}"
    return {name: from_sentencepiece(path) for name, path in SP_MODELS.items()}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of tiny models for the whole run (each is built once)."""
    return tmp_path_factory.mktemp("models")


class CountingBackend:
    """The real transformers backend, counting what it is asked to generate.

    Lets a test prove that a refused request produced zero tokens.
    """

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0
        self.chunks = 0
        self.active = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # prepare, release, is_loaded ...

    def generate(self, spec, messages: Sequence, options, emit: Callable[[str], None], stop, **kwargs) -> object:
        with self._lock:
            self.calls += 1
            self.active += 1

        def counted(text: str) -> None:
            with self._lock:
                self.chunks += 1
            emit(text)

        try:
            return self.inner.generate(spec, messages, options, counted, stop, **kwargs)  # type: ignore[attr-defined]
        finally:
            with self._lock:
                self.active -= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    """A launched app: its URL, settings and counting backend."""

    def __init__(self, url: str, settings: object, backend: CountingBackend, demo: object) -> None:
        self.url = url
        self.settings = settings
        self.backend = backend
        self.demo = demo

    def client(self):
        """A fresh gradio_client session: a new visitor."""
        from gradio_client import Client

        return Client(self.url, verbose=False)


ADMIN_TOKEN = "test-admin-token-0123456789"
# Every test client comes from 127.0.0.1: apps shared by many tests must not
# count them as one flooding address. The limits have tests of their own.
GENEROUS_LIMITS = {
    "rate_chat": "10000/minute",
    "rate_chat_address": "10000/minute",
    "rate_consent": "10000/minute",
    "rate_consent_address": "10000/minute",
    "rate_new_identity_address": "10000/minute",
    "rate_events_address": "100000/minute",
    "max_replies_per_address": 1000,
}


def launch(settings: object, models_dir: Path, wrap: Callable | None = None, **kwargs: object) -> RunningApp:
    """Build and launch the real app for ``settings`` on a free port; ``wrap`` may wrap its backend."""
    from inference.local.backend import TransformersBackend
    from webapp.boundary.serving import trim_overheads
    from webapp.factory import create_app
    from webapp.ui.page import launch_options

    backend = CountingBackend(TransformersBackend(models_dir=models_dir, max_loaded=4, offline=True))
    demo = create_app(settings, backend=wrap(backend) if wrap else backend, **kwargs)  # type: ignore[arg-type]
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options(settings))
    trim_overheads(demo)
    return RunningApp(url, settings, backend, demo)


@pytest.fixture(scope="module")
def running_app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningApp]:
    """The real app, launched in-process on a free port with a real SQLite file.

    It lists the real checkpoints too (they cannot load offline) so that their
    licences can be tested; the tiny models are what generates.
    """
    from webapp.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("appdata"),
        models="all",
        default_model="tiny-llama",
        hub_offline=True,
        admin_token=ADMIN_TOKEN,
        **GENEROUS_LIMITS,
    )
    app = launch(settings, models_dir)
    try:
        yield app
    finally:
        app.demo.close()


# -- databases ---------------------------------------------------------------------


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1, started by the test run (Debian's postgresql)."""

    def __init__(self, base: Path) -> None:
        import glob
        import os
        import subprocess

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        assert found, "Debian's postgresql is required (./dev test installs it)"
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        self.base = base
        self.data = base / "data"
        # PostgreSQL refuses to run as root: run it as the postgres system user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            subprocess.run(["chown", "-R", "postgres:postgres", str(base)], check=True)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``stop``) on the same port and data."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "start",
            "-o", f"-h 127.0.0.1 -p {self.port} -k {self.base} -F -c max_connections=100",
        )  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        import subprocess

        subprocess.run([*self._as, str(self.bin / tool), *args], check=True, capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run."""
    import shutil
    import tempfile

    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="llmjp-pg-"))
    base.chmod(0o755)
    server = PostgresServer(base)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


_databases = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind; the same test runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'audit.sqlite3'}"
    return request.getfixturevalue("postgres").create_database(f"test_{next(_databases)}")


def identity_of(app: RunningApp, receipt: str) -> str:
    """The identity the server records for the holder of ``receipt`` (its pseudonym, as admins see it)."""
    from webapp.gate.identity import Identities
    from webapp.gate.receipts import Receipts

    secret = app.settings.server_secret()  # type: ignore[attr-defined]
    receipts = Receipts(secret, max_age_days=90)
    read = receipts.read(receipt)
    assert read is not None, "not a receipt this server issued"
    return Identities(receipts, secret).pseudonym(read.anon_id)


def mock_hf_login(patch: pytest.MonkeyPatch, name: str = "alice", fullname: str = "Alice") -> None:
    """Off Spaces, Gradio mocks the Hugging Face login with the local account from ``whoami()``; the hub
    cannot be reached here, so that account is made up."""
    import gradio.oauth

    patch.setattr(gradio.oauth, "get_token", lambda: "hf_mock")
    patch.setattr(gradio.oauth, "whoami", lambda: {"type": "user", "name": name, "fullname": fullname, "avatarUrl": ""})


# -- the browser (Debian's Chromium, driven by Playwright) ---------------------------

# Chromium's headless shell: the same Blink and V8 as the browser, without the browser's windowing layers,
# which a headless run paints for nothing. A page load costs it 1.9 s of CPU instead of 3.4 s, a reply 7%
# less (measured on this page, 2 cores); Playwright's own headless Chromium is this shell too.
CHROMIUM = Path("/usr/bin/chromium-headless-shell")
# Flags for a sandboxed, offline machine: no background fetches that would be refused.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=ja-JP",
]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (the modules that drive the page import this)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield chromium
        chromium.close()
