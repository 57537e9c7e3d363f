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
        0.95,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p.",
    )
    top_k: int = Field(0, ge=0, le=1000, description="Keep only the k most likely tokens; 0 keeps all.")
    repetition_penalty: float = Field(
        1.0, ge=1.0, le=2.0, description="Penalty on tokens already present; 1.0 means none."
    )
    max_new_tokens: int = Field(
        100, ge=1, le=MAX_NEW_TOKENS, description="Upper bound on the number of tokens generated."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Seeds the sampler so the same request gives the same reply; None draws afresh.",
    )

    @classmethod
    def parse(cls, **values: Any) -> SamplingOptions:
        """Validate raw values (from the UI or the API), raising a bilingual ``InvalidInput``."""
        # Strict: a JSON string or boolean is not a number. Whole floats are
        # whole numbers (a slider sends 50.0 for top_k 50).
        ints = {"top_k", "max_new_tokens"}
        values = {k: int(v) if k in ints and type(v) is float and v.is_integer() else v for k, v in values.items()}
        try:
            return cls.model_validate(values, strict=True)
        except ValidationError as exc:
            ja, en = [], []
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else "?"
                if name not in cls.model_fields:
                    ja.append(f"{name} は指定できません")
                    en.append(f"{name} is not a sampling option")
                    continue
                given = err.get("input")
                shown = "NaN" if isinstance(given, float) and math.isnan(given) else repr(given)
                ja.append(f"{name} は {interval(name)} の範囲で指定してください(指定値: {shown})")
                en.append(f"{name} must be in {interval(name)}, got {shown}")
            raise InvalidInput("、".join(ja), "; ".join(en)) from None


def bounds(name: str) -> tuple[float, float]:
    """The declared (lower, upper) bound of a field, for sliders and messages."""
    meta = SamplingOptions.model_fields[name].metadata
    lo = next(v for m in meta for v in (getattr(m, "ge", None), getattr(m, "gt", None)) if v is not None)
    hi = next(m.le for m in meta if getattr(m, "le", None) is not None)
    return lo, hi


def interval(name: str) -> str:
    """A field's range in interval notation, e.g. ``(0.0, 1.0]``."""
    lo, hi = bounds(name)
    open_low = any(getattr(m, "gt", None) is not None for m in SamplingOptions.model_fields[name].metadata)
    return f"{'(' if open_low else '['}{lo}, {hi}]"
