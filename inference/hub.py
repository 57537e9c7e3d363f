"""What the Hugging Face hub can give this process, and its errors in words."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
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


class Reachability:
    """Whether the hub answers, asked again with growing pauses while it does not.

    A hub that was down at start-up is noticed when it comes back, without a
    3-second check on every request: failures wait ``first_retry`` seconds,
    then twice that, up to ``max_retry``; an answer is trusted for ``max_retry``.
    """

    def __init__(
        self,
        check: Callable[[], bool] = reachable,
        *,
        first_retry: float = 30.0,
        max_retry: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._first = first_retry
        self._max = max_retry
        self._clock = clock
        self._delay = first_retry
        self._next: float | None = None
        self._ok = False
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        """True when the hub answered at the latest check that is still in force."""
        with self._lock:
            now = self._clock()
            if self._next is not None and now < self._next:
                return self._ok
            self._ok = self._check()
            if self._ok:
                self._delay = self._first
                self._next = now + self._max
            else:
                self._next = now + self._delay
                self._delay = min(self._delay * 2, self._max)
            return self._ok


def needs_token(spec: ModelSpec) -> ModelUnavailable:
    """The message for a gated repository asked for without an approved account's token."""
    return ModelUnavailable(
        f"{spec.source} は承認制のリポジトリです。利用が承認されたアカウントのトークンを HF_TOKEN に設定してください。",
        f"{spec.source} is gated: set HF_TOKEN to a token of an account whose access was approved.",
    )


def cannot_download(spec: ModelSpec) -> ModelUnavailable:
    """The message for a checkpoint not in the cache while the hub cannot be reached."""
    return ModelUnavailable(
        f"{spec.source} をダウンロードできません(ネットワークがないかオフラインです)。tiny- モデルを選ぶか、重みを事前に取得してください。",
        f"Cannot download {spec.source} (no network, or offline mode). Choose a tiny- model or fetch the weights first.",
    )


def explain(spec: ModelSpec, exc: BaseException) -> ModelUnavailable:
    """A visitor-facing explanation of why ``spec`` could not be loaded."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    # transformers re-raises hub errors as OSError; the hub's own is its cause.
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, GatedRepoError | RepositoryNotFoundError):
        cause = cause.__cause__ or cause.__context__
    exc = cause or exc
    if isinstance(exc, GatedRepoError):
        return needs_token(spec)
    if isinstance(exc, RepositoryNotFoundError):
        return ModelUnavailable(
            f"リポジトリ {spec.source} が見つかりません(名前か HF_TOKEN を確認してください)。",
            f"Repository {spec.source} was not found (check its name, or HF_TOKEN).",
        )
    if isinstance(exc, LocalEntryNotFoundError) or "offline" in str(exc).lower():
        return cannot_download(spec)
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


def config_only(repo_id: str, *, token: str | None, revision: str | None, offline: bool, cache_dir: str | None) -> str:
    """The snapshot directory holding ``repo_id``'s ``config.json``, fetching that file alone if needed."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for cache in dict.fromkeys([None, cache_dir]):
        with contextlib.suppress(LocalEntryNotFoundError):
            found = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache, local_files_only=True)
            return str(Path(found).parent)
    if offline:
        raise LocalEntryNotFoundError(f"{repo_id} is not in the cache and the hub is not to be contacted (offline)")
    found = hf_hub_download(
        repo_id, "config.json", revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint()
    )
    return str(Path(found).parent)


def complete(snapshot: Path) -> bool:
    """Whether a cached snapshot holds a config and every weights file it needs (not a broken-off download)."""
    if not (snapshot / "config.json").is_file():
        return False
    for index in [*snapshot.glob("*.safetensors.index.json"), *snapshot.glob("*.bin.index.json")]:
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((snapshot / shard).is_file() for shard in shards)
    return any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))


def download(
    repo_id: str,
    *,
    token: str | None,
    report: Callable[[int, int], None],
    revision: str | None = None,
    offline: bool = False,
    cache_dir: str | None = None,
) -> str:
    """Fetch what ``from_pretrained`` reads (config, tokenizer, one set of weights) into the hub cache.

    ``report(done, total)`` hears the bytes written so far. Returns the local
    snapshot directory, which is named by the commit. A checkpoint already in
    the default cache or in ``cache_dir`` is not fetched again; ``offline``,
    only the caches are looked at. New downloads go to ``cache_dir``.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    # Already here: the image's own cache (a Space's preload_from_hub puts checkpoints there) or ours.
    for cache in dict.fromkeys([None, cache_dir]):
        with contextlib.suppress(LocalEntryNotFoundError):
            found = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
            if complete(Path(found)):
                return found
    if offline:
        raise LocalEntryNotFoundError(f"{repo_id} is not in the cache and the hub is not to be contacted (offline)")
    files = HfApi(endpoint=endpoint()).list_repo_files(repo_id, token=token, revision=revision)
    top = [f for f in files if "/" not in f]
    # Prefer safetensors; older checkpoints publish only PyTorch pickles.
    weights = [f for f in top if f.endswith(".safetensors")] or [f for f in top if f.endswith(".bin")]
    weights += [f for f in top if f.endswith((".safetensors.index.json", ".bin.index.json"))]
    allow = ["*.json", "*.model", "*.txt", "*.tiktoken", *weights]
    return snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        allow_patterns=allow,
        endpoint=endpoint(),
        tqdm_class=_byte_progress(report),
    )
