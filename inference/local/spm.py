"""Build a Hugging Face fast tokenizer from a SentencePiece Unigram model.

The LLM-jp tokenizers are SentencePiece Unigram models with byte fallback and
an identity normaliser. transformers' slow-to-fast conversion of such a file
produces a BPE model that splits Japanese differently from SentencePiece, so
this module builds the ``tokenizers`` Unigram model directly from the pieces
and scores, which reproduces SentencePiece's ids exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6
SPACE = "\u2581"


def byte_pieces() -> list[str]:
    """The 256 byte-fallback pieces, ``<0x00>`` to ``<0xFF>``, in SentencePiece's order."""
    return [f"<0x{b:02X}>" for b in range(256)]


def unigram_tokenizer(
    pieces: Sequence[tuple[str, float]],
    *,
    unk_id: int,
    special: Iterable[str],
    add_dummy_prefix: bool = True,
) -> Tokenizer:
    """A byte-fallback Unigram ``Tokenizer`` that segments text like SentencePiece.

    ``special`` names pieces that must never be produced from ordinary text
    (SentencePiece control symbols); they are matched only as added tokens.
    """
    tok = Tokenizer(models.Unigram(list(pieces), unk_id=unk_id, byte_fallback=True))
    # Identity normalisation: SentencePiece only maps spaces to U+2581 and
    # always adds the dummy prefix, even before a leading space (the Metaspace
    # pre-tokenizer skips it there). No whitespace split: pieces span spaces.
    steps = [normalizers.Prepend(SPACE)] if add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            # SentencePiece drops the dummy-prefix space when decoding.
            *([decoders.Strip(" ", 1, 0)] if add_dummy_prefix else []),
        ]
    )
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in special])
    return tok


def from_sentencepiece(
    model_file: str | Path,
    *,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    pad_token: str | None = None,
) -> PreTrainedTokenizerFast:
    """Load a SentencePiece ``.model`` file as a faithful ``PreTrainedTokenizerFast``."""
    from sentencepiece import sentencepiece_model_pb2

    # protobuf builds ModelProto when the module is imported, so no type checker can see it.
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != 1:  # 1 is UNIGRAM
        raise ValueError(f"{model_file}: only Unigram SentencePiece models are supported")
    if proto.normalizer_spec.precompiled_charsmap:
        raise ValueError(f"{model_file}: models with a normalisation map are not supported")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    special = [p.piece for p in proto.pieces if p.type in (_UNKNOWN, _CONTROL)]
    tok = unigram_tokenizer(
        pieces,
        unk_id=proto.trainer_spec.unk_id,
        special=special,
        add_dummy_prefix=proto.normalizer_spec.add_dummy_prefix,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        unk_token=proto.pieces[proto.trainer_spec.unk_id].piece,
        pad_token=pad_token or eos_token,
        clean_up_tokenization_spaces=False,
    )
