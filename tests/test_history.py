"""What a browser sends as its kept conversations is checked like any input; versions keep what they replace."""

from __future__ import annotations

import pytest

from inference import InvalidInput
from inference.registry import TINY_MODELS, Registry
from webapp.chat import history, versions
from webapp.handlers import MAX_TURN_CHARS

REGISTRY = Registry.of(TINY_MODELS)


def chat(**changes):
    base = {
        "id": "0123456789ab",
        "title": "富士山",
        "updated": "2026-01-01T00:00:00+00:00",
        "model": "tiny-llama",
        "sampling": {"temperature": 0.7, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.0,
                     "max_new_tokens": 64, "seed": ""},
        "messages": [{"role": "user", "content": "富士山"}, {"role": "assistant", "content": "高い山です"}],
    }  # fmt: skip
    return base | changes


def turns(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


@pytest.mark.parametrize(
    "store",
    [
        "not a list",
        [chat(id="../../etc")],
        [chat(messages=[{"role": "system", "content": "x"}])],
        [chat(messages=[{"role": "user", "content": "x" * (MAX_TURN_CHARS + 1)}])],
        [chat(messages=[{"role": "user", "content": "\ud800"}])],
        [chat(messages=turns(*["a"] * 201))],
        [chat(), chat()],
        [chat()] * (history.MAX_CHATS + 1),
    ],
    ids=["type", "id", "role", "turn-length", "surrogate", "turns", "duplicate", "count"],
)
def test_bad_stores_are_refused_in_both_languages(store) -> None:
    with pytest.raises(InvalidInput) as refused:
        history.check_store(store, REGISTRY)
    assert refused.value.ja and refused.value.en


def test_a_good_store_passes_and_the_list_stays_within_its_size() -> None:
    chats = history.check_store([chat()], REGISTRY)
    assert history.listing(chats, "高い") == [("富士山", "0123456789ab")]
    assert history.listing(chats, "琵琶湖") == []
    big = [history.Saved.model_validate(chat(id=f"{i:012x}", messages=turns("x" * 19_000))) for i in range(30)]
    kept, dropped = history.upsert(big[1:], big[0])
    assert kept[0].id == big[0].id and dropped > 0
    assert len(history.dump(kept)) * 19_000 < history.MAX_STORE_CHARS + 19_000


def test_a_fork_keeps_the_tail_and_switching_brings_it_back() -> None:
    old = turns("琵琶湖", "大きい湖", "もっと", "詳しく")
    forked = versions.fork(old, {}, 0)
    new = turns("琵琶湖の大きさ", "670 km²")
    kept = versions.settle(new, forked)
    assert versions.arrows(new, kept) == [{"user": 0, "index": 0, "shown": 1, "count": 2}]
    back, kept = versions.switch(new, kept, 0, -1)
    assert back == old
    assert versions.arrows(back, kept)[0]["shown"] == 0
    assert versions.switch(back, kept, 0, -1) is None
    # A reply that never came leaves the conversation as it was: the fork is taken back.
    assert versions.settle(old, versions.fork(old, {}, 2)) == {}
