"""Streaming Japanese: exact joins, no U+FFFD, kana as they come."""

from __future__ import annotations

import pytest

from inference.local.decoder import IncrementalDecoder

TEXT = (
    "富士山は日本一高い山です。ひらがなだけのぶんしょう、カタカナノブン。"
    "𠮷野家で𩸽を食べた🍣🇯🇵👨‍👩‍👧\n  def f(x):\n\treturn x  # コメント\n\n 全角　スペース！？"
)


def stream(tokenizer: object, ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tokenizer)
    chunks = [decoder.push([i]) for i in ids]
    chunks.append(decoder.flush())
    return chunks


@pytest.mark.parametrize("version", ["ver3.0", "ver3.1", "ver2.1"])
def test_chunks_join_exactly(real_tokenizers: dict, japanese_lines: list[str], version: str) -> None:
    tok = real_tokenizers[version]
    for text in [TEXT, *japanese_lines]:
        ids = [*tok.encode(text, add_special_tokens=False), tok.eos_token_id]
        chunks = stream(tok, ids)
        assert "".join(chunks) == tok.decode(ids, skip_special_tokens=True)
        assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("version", ["ver3.0", "ver2.1"])
def test_byte_fallback_is_held_until_the_character_is_whole(real_tokenizers: dict, version: str) -> None:
    tok = real_tokenizers[version]
    ids = tok.encode("𩸽", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert sum(p.startswith("<0x") for p in pieces) == 4, pieces  # a rare kanji is four byte tokens
    chunks = stream(tok, ids)
    assert [c for c in chunks if c] == ["𩸽"]
    assert chunks.index("𩸽") == len(ids) - 1  # emitted with its last byte, not before, not later


def test_kana_are_not_held_back(real_tokenizers: dict) -> None:
    """Each kana token is shown as soon as it is generated (TextIteratorStreamer waits for a space or kanji)."""
    tok = real_tokenizers["ver3.0"]
    text = "ぁぃぅぇぉゃゅょゎっ"
    ids = tok.encode(text, add_special_tokens=False)
    assert not any(p.startswith("<0x") for p in tok.convert_ids_to_tokens(ids))
    decoder = IncrementalDecoder(tok)
    shown = ""
    for n, i in enumerate(ids, start=1):
        shown += decoder.push([i])
        assert shown == tok.decode(ids[:n])  # nothing waits for a later token
    assert shown == text


def test_leading_space_after_newline_is_kept(real_tokenizers: dict) -> None:
    tok = real_tokenizers["ver3.0"]
    ids = tok.encode("一行目\n 二行目", add_special_tokens=False)
    assert "".join(stream(tok, ids)) == "一行目\n 二行目"


def test_invalid_bytes_are_dropped_not_shown(real_tokenizers: dict) -> None:
    tok = real_tokenizers["ver3.0"]
    stray = tok.convert_tokens_to_ids(["<0x9F>", "<0x80>"])  # continuation bytes with no lead byte
    a, i = tok.convert_tokens_to_ids(["あ", "い"])
    ids = [a, *stray, i]
    chunks = stream(tok, ids)
    assert "".join(chunks) == "あい"
    assert not any("\ufffd" in c for c in chunks)
