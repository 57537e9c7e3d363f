"""Backends built on first use, from several threads at once, in fresh processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# Each thread builds its own backend (or imports what a served model's preload needs) at the same
# instant, as the local backend's warm-up, a served model's preload and a visitor's first reply can. Without the shared lock, transformers' lazy names
# were half-bound in about one such process in two here ("cannot import name ... from 'transformers'").
BUILDS = textwrap.dedent(
    """
    import threading
    from inference.lazy import Deferred, heavy_import

    def local():
        import inference.local.backend
        return inference.local.backend

    def remote():
        import inference.servers.remote
        return inference.servers.remote

    def names(*wanted):
        def build():
            import transformers
            return [getattr(transformers, name) for name in wanted]
        return build

    def tiny():  # a served model's preload, outside any backend's build
        return heavy_import("inference.local.tiny")

    builds = [local, remote, tiny, names("DynamicCache"), names("LlamaConfig", "MixtralConfig"),
              names("GPT2Config", "GPTNeoXConfig"), names("AutoModelForCausalLM")]
    start = threading.Barrier(len(builds))
    failures = []

    def run(build):
        start.wait()
        try:
            build() if build is tiny else Deferred(build).get()
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=run, args=(b,)) for b in builds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(failures or "built")
    """
)


def test_backends_built_on_several_threads_at_once_all_import_cleanly() -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDS], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-2000:]
        assert out.strip() == "built", out
