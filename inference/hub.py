"""What the Hugging Face hub can give this process, and its errors in words."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from inference.errors import ModelUnavailable
from inference.registry import ModelSpec

HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def offline_by_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks transformers never to reach the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (any HTTP status counts as an answer)."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{HUB_URL}/api/health", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def explain(spec: ModelSpec, exc: BaseException) -> ModelUnavailable:
    """A visitor-facing explanation of why ``spec`` could not be loaded."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

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
