"""What the chat page costs the visitor's browser and the server, reply by reply.

``python -m bench.page [replies]``: the real app (``python app.py``, tiny models) and the browser tests'
Chromium (Debian's headless shell, through Playwright; ``./dev test`` installs both). One visitor accepts the terms, then sends
``replies`` messages in one conversation, each reply the tiny Llama's 64 tokens. For the page load and
for each reply: the CPU seconds of every Chromium process, of the app's process, and the time from
Enter to Send showing again. The conversation grows as it goes: the last replies show what a longer
conversation costs each update.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import server


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + getattr(times, "children_user", 0) + getattr(times, "children_system", 0)
    return total


def _chromium() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any("chromium" in part for part in (p.info["cmdline"] or [])[:1]):
            found.append(p)
    return found


class _Meter:
    """CPU of the browser and the app, and wall time, over one step."""

    def __init__(self, app: psutil.Process) -> None:
        self.app = app

    def __enter__(self) -> _Meter:
        self.browser0, self.app0, self.t0 = _cpu(_chromium()), _cpu([self.app]), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.browser = _cpu(_chromium()) - self.browser0
        self.server = _cpu([self.app]) - self.app0


def run(replies: int = 12) -> list[tuple[str, float, float, float]]:
    """(step, browser CPU s, app CPU s, wall s) for the page load and each reply."""
    from playwright.sync_api import expect, sync_playwright

    from tests.conftest import CHROMIUM, FLAGS  # the browser and flags of the browser tests
    from tests.test_browser import accept
    from tests.test_chat_browser import set_slider

    out = []
    with tempfile.TemporaryDirectory(prefix="llmjp-page-") as tmp:
        app = server.app(Path(tmp), extra={"LLMJP_DEFAULT_MODEL": "tiny-llama"})
        try:
            meter = _Meter(psutil.Process(app.process.pid))
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
                page = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 1000}).new_page()
                with meter:
                    page.goto(app.url, wait_until="load")
                    page.get_by_role("button", name="同意する", exact=True).wait_for(timeout=60_000)
                out.append(("page load", meter.browser, meter.server, meter.wall))
                accept(page)
                set_slider(page, "max_new_tokens", 64)  # the tiny models' default is 16
                box = page.locator("#chat-message textarea")
                for i in range(replies + 1):  # the first loads the model: not counted
                    with meter:
                        box.fill(f"こんにちは {i}")
                        box.press("Enter")
                        expect(page.locator("#stop")).to_be_visible(timeout=60_000)
                        expect(page.locator("#send")).to_be_visible(timeout=120_000)
                    if i:
                        out.append((f"reply {i}", meter.browser, meter.server, meter.wall))
                browser.close()
        finally:
            app.stop()
    return out


def main() -> None:
    replies = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    steps = run(replies)
    print("| step | browser CPU (s) | app CPU (s) | Enter to Send (s) |\n|---|---|---|---|")
    for name, browser, app, wall in steps:
        print(f"| {name} | {browser:.2f} | {app:.2f} | {wall:.2f} |")
    each = steps[1:]
    half = max(1, len(each) // 2)
    for label, part in (("replies, first half (median)", each[:half]), ("replies, second half (median)", each[half:])):
        if part:
            med = [statistics.median(s[k] for s in part) for k in (1, 2, 3)]
            print(f"| {label} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |")


if __name__ == "__main__":
    main()
