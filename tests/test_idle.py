"""An idle server stays idle: on a CPU machine every wake-up of the web layer takes a core from the model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def wake_ups(pid: int) -> int:
    """Context switches the process's threads have given up the CPU for, so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts context switches through Linux's /proc")
def test_an_idle_server_wakes_up_rarely(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"LLMJP_DATA_DIR": str(tmp_path), "LLMJP_MODELS": "tiny", "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_SERVER_NAME": "127.0.0.1", "HF_HUB_OFFLINE": "1", "LLMJP_WARM_UP_S": "0",
                        "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
    with (tmp_path / "app.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as page:
                    assert page.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not start"
                time.sleep(0.2)
        time.sleep(5)  # start-up work (the warm-up import of torch) done
        before = wake_ups(proc.pid)
        time.sleep(3)
        per_second = (wake_ups(proc.pid) - before) / 3
        # Gradio's own queue would poll a thousand times a second; every 10 ms is a hundred.
        assert per_second < 300, f"{per_second:.0f} wake-ups a second while idle"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
