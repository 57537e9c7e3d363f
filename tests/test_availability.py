"""Which models can load here (without loading any), the prompt shown under a reply, and what a failed reply
gives back to the message box."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inference import CHECKPOINTS, TINY_MODELS
from webapp.chat import reply as chat_reply
from webapp.chat.availability import Availability
from webapp.chat.prompt_view import prompt_section

GB = 1000**3
BY_ID = {s.id: s for s in CHECKPOINTS + TINY_MODELS}


def availability(tmp_path: Path, *, token: str | None = None, offline: bool = True, ram: int = 24 * GB):
    return Availability(token=token, offline=lambda: offline, hub_cache=str(tmp_path), capacity=lambda: ram)


def _cache_config(cache: Path, repo: str) -> None:
    """A hub cache entry holding the repository's config, laid out as huggingface_hub writes it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


@pytest.mark.parametrize(
    ("model_id", "token", "offline", "ram", "expected"),
    [
        ("tiny-llama", None, True, 1, None),  # built here, whatever the machine
        ("llm-jp-3.1-1.8b-instruct4", None, False, 24 * GB, None),  # the hub answers: it downloads
        ("llm-jp-3.1-1.8b-instruct4", None, True, 24 * GB, "Cannot download"),
        ("llm-jp-3-172b-beta1-instruct", None, False, 2000 * GB, "is gated"),
        ("llm-jp-3-172b-beta1-instruct", "hf_x", False, 2000 * GB, None),
        ("llm-jp-3-172b-beta1-instruct", "hf_x", False, 24 * GB, "does not fit this machine"),
        ("llm-jp-3.1-8x13b-instruct4", None, False, 80 * GB, "does not fit this machine"),
    ],
)
def test_why_a_model_cannot_load_here(tmp_path: Path, model_id, token, offline, ram, expected) -> None:
    why = availability(tmp_path, token=token, offline=offline, ram=ram).reason(BY_ID[model_id])
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why.en and why.ja  # said in both languages


def test_a_downloaded_checkpoint_loads_offline_and_a_local_copy_always(tmp_path: Path) -> None:
    spec = BY_ID["llm-jp-3.1-1.8b-instruct4"]
    _cache_config(tmp_path, spec.source)
    assert availability(tmp_path).reason(spec) is None
    local = dataclasses.replace(BY_ID["llm-jp-13b-instruct-v1.1"], source=str(tmp_path))
    assert availability(tmp_path).reason(local) is None


def test_the_model_list_marks_what_cannot_load_and_says_why(tmp_path: Path) -> None:
    check = availability(tmp_path)
    specs = [BY_ID["tiny-llama"], BY_ID["llm-jp-3.1-1.8b-instruct4"]]
    assert check.choices(specs) == [
        (specs[0].label, "tiny-llama"),
        (specs[1].label + " (利用不可 / unavailable)", "llm-jp-3.1-1.8b-instruct4"),
    ]
    assert check.note(specs[0], "ja") == ""
    assert check.note(specs[1], "ja").startswith("**利用できません:**")
    assert check.note(specs[1], "en").startswith("**Unavailable:** Cannot download")


def test_the_prompt_is_shown_exactly_and_no_backticks_in_it_can_end_its_block() -> None:
    text = "<s>以下は、タスクを説明する指示です。\n\n### 指示:\n```コード```と ```` も\n\n### 応答:\n"
    shown = prompt_section("ja", {"prompt_text": text, "prompt_tokens": 42})
    assert "<summary>プロンプトを表示(42 トークン)</summary>" in shown
    assert "`````text\n" + text + "\n`````" in shown  # one backtick longer than the longest run inside
    assert prompt_section("en", {"prompt_text": None}) == ""
    assert "Show the prompt(7 tokens)" in prompt_section("en", {"prompt_text": "x", "prompt_tokens": 7})


@pytest.mark.parametrize(
    ("pick", "box", "text", "expected"),
    [
        (chat_reply.typed, "送った文", "送った文", "送った文"),  # the box was emptied: it gets the text back
        (chat_reply.edited, "", "直した文", "直した文"),  # an edit's text is not lost either
        (chat_reply.edited, "下書き", "直した文", None),  # ... but never over a draft
        (chat_reply.again, "下書き", "前の文", None),  # retry never touched the box
    ],
)
def test_what_a_failed_reply_gives_back_to_the_box(pick, box, text, expected) -> None:
    assert chat_reply.keep_typed(pick, box, text) == expected
