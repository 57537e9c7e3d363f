"""The one validated type for sampling options.

Ranges are declared once, on the fields; the UI's sliders read them from here.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.errors import InvalidInput

# A reply longer than this is not a chat turn; the per-model context also bounds it.
MAX_NEW_TOKENS = 2048


class SamplingOptions(BaseModel):
    """How to pick each next token. Temperature 0 means greedy decoding."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    temperature: float = Field(
        0.7, ge=0.0, le=2.0, description="Softmax temperature; 0 means greedy (argmax) decoding."
    )
    top_p: float = Field(
        0.95, gt=0.0, le=1.0, description="Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p."
    )
    top_k: int = Field(0, ge=0, le=1000, description="Keep only the k most likely tokens; 0 keeps all.")
    repetition_penalty: float = Field(
        1.0, ge=1.0, le=2.0, description="Penalty on tokens already present; 1.0 means none."
    )
    max_new_tokens: int = Field(
        100, ge=1, le=MAX_NEW_TOKENS, description="Upper bound on the number of tokens generated."
    )

    @classmethod
    def parse(cls, **values: Any) -> SamplingOptions:
        """Validate raw values (from the UI or the API), raising a bilingual ``InvalidInput``."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else "?"
                lo, hi = bounds(name) if name in cls.model_fields else (None, None)
                given = err.get("input")
                if isinstance(given, float) and math.isnan(given):
                    given = "NaN"
                problems.append((name, _describe(name, lo, hi), given))
            ja = "、".join(f"{n} は {r} の範囲で指定してください(指定値: {g!r})" for n, r, g in problems)
            en = "; ".join(f"{n} must be in {r}, got {g!r}" for n, r, g in problems)
            raise InvalidInput(ja, en) from None

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers`` ``generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature == 0.0:
            # Sampling knobs are meaningless for greedy search; leaving them out
            # also keeps transformers from warning about unused flags.
            return kwargs | {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return kwargs | {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or None,
        }


def bounds(name: str) -> tuple[float | None, float | None]:
    """The declared (lower, upper) bound of a field, for sliders and messages."""
    lo = hi = None
    for meta in SamplingOptions.model_fields[name].metadata:
        lo = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else lo
        lo = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else lo
        hi = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else hi
    return lo, hi


def _describe(name: str, lo: float | None, hi: float | None) -> str:
    exclusive_low = any(getattr(m, "gt", None) is not None for m in SamplingOptions.model_fields[name].metadata)
    return f"{'(' if exclusive_low else '['}{lo}, {hi}]"
