"""The context-window check of the GReaT generator: do the serialised rows fit the model?

GReaT-style generators fail on wide tables (be_great with 20+ columns) because a row's text outgrows the
model's context. `fit` measures every training sequence and, when the longest does not fit, raises BadInput
with `too_wide` as its message: the table width, the longest row's token count, the limit and where it comes
from, and the fixes, measured where they can be: the largest `float_digits` that makes rows fit (or, when
none does, how far the fewest digits shorten them), a larger `max_length` up to the model's context, a model
with a longer context, fewer columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from perfscale.llm.serialize import RowCodec
    from perfscale.llm.training import LanguageModel

FLOAT_DIGITS_TRIED = (6, 4, 3, 2)


def longest_tokens(lm: LanguageModel, codec: RowCodec, table: pd.DataFrame) -> int:
    """Token count of the longest row of `table` written by `codec` (one column order per row)."""
    import numpy as np

    return max(len(lm.sequence(t)) for t in codec.texts(table, 1, np.random.default_rng(0)))


def float_digits_fix(lm: LanguageModel, codec: RowCodec, table: pd.DataFrame, limit: int) -> str | None:
    """The float_digits advice for rows too long at `limit` tokens, or None when fewer digits do not help."""
    from perfscale.llm.serialize import RowCodec

    if not any(c.type == "numerical" for c in codec.columns):
        return None
    current = longest_tokens(lm, codec, table)
    tried = [d for d in FLOAT_DIGITS_TRIED if codec.float_digits is None or d < codec.float_digits]
    shortest = None
    for digits in tried:
        tokens = longest_tokens(lm, RowCodec(codec.columns, digits), table)
        if tokens <= limit:
            return f"float_digits: {digits} (rows then take up to {tokens} tokens)"
        if tokens < current:
            shortest = (digits, tokens)
    if shortest is None:
        return None
    return f"float_digits: {shortest[0]} (shortens rows to {shortest[1]} tokens: not enough alone)"


def too_wide(
    generator: str,
    base_model: str,
    lm: LanguageModel,
    codec: RowCodec,
    table: pd.DataFrame,
    longest: int,
    limit: int,
) -> str:
    context = lm.context
    source = "max_length" if limit < context else f"the context of base model {base_model!r}"
    fixes = [fix for fix in [float_digits_fix(lm, codec, table, limit)] if fix]
    if limit < context:
        fixes.append(f"max_length up to the model's context, {context}")
    longer = "tiny_config n_positions" if base_model == "tiny" else "'smollm2' takes 8192"
    fixes.append(f"a base model with a longer context ({longer})")
    fixes.append("fewer columns")
    return (
        f"the table is too wide for the {generator} generator: rows of its {table.shape[1]} columns take up "
        f"to {longest} tokens (start and end tokens included), more than the {limit}-token limit ({source}); "
        f"fixes: {'; '.join(fixes)}"
    )
