"""``python -m db`` as the tests run it: in a process of its own, or its ``main()`` in this one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

from tests.conftest import ROOT


def in_a_process(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it: its own start-up, exit status and streams."""
    return subprocess.run([sys.executable, "-m", "db", *args], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | {"LLMJP_DATABASE_URL": database_url} | env)  # fmt: skip


def in_this_process(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The same command's ``main()`` in this process: its exit status and output, without a Python start-up.

    Each start costs about 0.7 s; the tests that are about the process itself (each command once) use
    ``in_a_process``.
    """
    from db.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    environment = mock.patch.dict(os.environ, {"LLMJP_DATABASE_URL": database_url} | env)
    with environment, redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as refused:  # argparse refuses bad arguments this way
            status = refused.code if isinstance(refused.code, int) else 1
    return subprocess.CompletedProcess(["python", "-m", "db", *args], status, out.getvalue(), err.getvalue())
