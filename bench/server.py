"""Starting the real app as its own process, the way it is deployed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def idle_cpu(pid: int, seconds: float = 3.0, settle: float = 8.0) -> float:
    """Share of one core a process uses at rest, over ``seconds`` after ``settle`` (the app imports its
    model libraries in the background for a few seconds after it answers)."""
    time.sleep(settle)
    ticks = os.sysconf("SC_CLK_TCK")

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = used()
    time.sleep(seconds)
    return (used() - before) / seconds


@dataclass
class Server:
    """A running server process and how long it took to answer."""

    process: subprocess.Popen[bytes]
    url: str
    ready_s: float

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(command: list[str], env: dict[str, str], port: int, timeout: float = 120) -> Server:
    """Run ``command`` and wait until its page answers HTTP 200."""
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=os.environ | env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return Server(process, url, time.perf_counter() - started)
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise TimeoutError(f"{command} did not answer within {timeout} s")


# Every simulated visitor connects from 127.0.0.1: the per-address abuse limits would
# otherwise count a whole benchmark crowd as one stranger.
ONE_ADDRESS_LIMITS = {
    "LLMJP_RATE_CHAT": "100000/minute",
    "LLMJP_RATE_CHAT_ADDRESS": "100000/minute",
    "LLMJP_RATE_CONSENT": "100000/minute",
    "LLMJP_RATE_CONSENT_ADDRESS": "100000/minute",
    "LLMJP_RATE_NEW_IDENTITY_ADDRESS": "100000/minute",
    "LLMJP_MAX_REPLIES_PER_ADDRESS": "1024",
    "LLMJP_RATE_EVENTS_ADDRESS": "100000/second",
    "LLMJP_MAX_WAITING_EVENTS": "100000",
}


def app(data_dir: Path, model_paths: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> Server:
    """``python app.py`` with tiny models, offline, on a free port; ``extra`` adds or overrides settings."""
    port = free_port()
    env = (
        ONE_ADDRESS_LIMITS
        | {
            "GRADIO_SERVER_PORT": str(port),
            "LLMJP_DATA_DIR": str(data_dir),
            "LLMJP_MODELS": "tiny",
            "LLMJP_MODEL_PATHS": json.dumps(model_paths or {}),
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        | (extra or {})
    )
    return start([sys.executable, "app.py"], env, port)


# A plain Gradio app, as anyone writes one: its import rewrites Gradio's type stubs, which the app's
# import skips (webapp.gradio_import, about 1.9 s here), so the ratio counts that saving in the app's favour.
HELLO = "import gradio as gr\ngr.Interface(lambda x: x, 'text', 'text').launch()\n"


def plain_gradio() -> Server:
    """A hello-world Gradio app: the baseline for start-up time and memory."""
    port = free_port()
    env = {"GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    return start([sys.executable, "-c", HELLO], env, port)
