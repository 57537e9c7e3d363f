"""What the Hugging Face hub can give this process, and its errors in words."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from inference.errors import ModelUnavailable
from inference.registry import ModelSpec


def endpoint() -> str:
    """The hub's URL: huggingface_hub's, which honours ``HF_ENDPOINT`` (a mirror, or a test's stand-in)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_by_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks transformers never to reach the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (any HTTP status counts as an answer)."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint()}/api/health", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def explain(spec: ModelSpec, exc: BaseException) -> ModelUnavailable:
    """A visitor-facing explanation of why ``spec`` could not be loaded."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    # transformers re-raises hub errors as OSError; the hub's own is its cause.
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, GatedRepoError | RepositoryNotFoundError):
        cause = cause.__cause__ or cause.__context__
    exc = cause or exc
    if isinstance(exc, GatedRepoError):
        return ModelUnavailable(
            f"{spec.source} は承認制のリポジトリです。利用が承認されたアカウントのトークンを HF_TOKEN に設定してください。",
            f"{spec.source} is gated: set HF_TOKEN to a token of an account whose access was approved.",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelUnavailable(
            f"リポジトリ {spec.source} が見つかりません(名前か HF_TOKEN を確認してください)。",
            f"Repository {spec.source} was not found (check its name, or HF_TOKEN).",
        )
    if isinstance(exc, LocalEntryNotFoundError) or "offline" in str(exc).lower():
        return ModelUnavailable(
            f"{spec.source} をダウンロードできません(ネットワークがないかオフラインです)。tiny- モデルを選ぶか、重みを事前に取得してください。",
            f"Cannot download {spec.source} (no network, or offline mode). Choose a tiny- model or fetch the weights first.",
        )
    return ModelUnavailable(
        f"{spec.id} を読み込めませんでした: {type(exc).__name__}",
        f"Could not load {spec.id}: {type(exc).__name__}",
    )


def _byte_progress(report: Callable[[int, int], None]) -> type:
    """A tqdm class for ``snapshot_download`` that passes byte counts to ``report`` and draws nothing."""
    from tqdm import tqdm

    class _Bytes(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; plain tqdm does not
            self._bytes = kwargs.get("unit") == "B"
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "disable": False, "mininterval": 0.2})

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self._bytes:
                report(int(self.n), int(self.total or 0))
            return shown

    return _Bytes


def download(
    repo_id: str,
    *,
    token: str | None,
    report: Callable[[int, int], None],
    revision: str | None = None,
    offline: bool = False,
) -> str:
    """Fetch what ``from_pretrained`` reads (config, tokenizer, one set of weights) into the hub cache.

    ``report(done, total)`` hears the bytes written so far. Returns the local
    snapshot directory, which is named by the commit. Files already cached
    are not fetched again; ``offline``, only the cache is looked at.
    """
    from huggingface_hub import HfApi, snapshot_download

    if offline:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    files = HfApi(endpoint=endpoint()).list_repo_files(repo_id, token=token, revision=revision)
    top = [f for f in files if "/" not in f]
    # Prefer safetensors; older checkpoints publish only PyTorch pickles.
    weights = [f for f in top if f.endswith(".safetensors")] or [f for f in top if f.endswith(".bin")]
    weights += [f for f in top if f.endswith((".safetensors.index.json", ".bin.index.json"))]
    allow = ["*.json", "*.model", "*.txt", "*.tiktoken", *weights]
    return snapshot_download(
        repo_id,
        revision=revision,
        token=token,
        allow_patterns=allow,
        endpoint=endpoint(),
        tqdm_class=_byte_progress(report),
    )
