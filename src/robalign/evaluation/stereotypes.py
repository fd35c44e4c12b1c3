"""Where the rule judge's stereotype fields come from (``judge run``).

The rule judge needs each prompt's stereotype and counter-stereotype. In order:

1. ``--base-prompts DIR``: joined by prompt text from the CLEAR-Bias base prompts
   (``tables.join_base_prompts``); naming columns as well is an error, as the two would
   compete.
2. ``--stereotype-col`` / ``--counter-stereotype-col``, else columns named STEREOTYPE and
   COUNTER-STEREOTYPE in the data.
3. Rule judge only, when neither is there: the ``base_prompts`` folder beside the data
   file's folder (the CLEAR-Bias layout), else an error naming both fixes.

Other judges use the fields when present and need none.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation import tables


class StereotypeFields(NamedTuple):
    df: pd.DataFrame  # the data, with the joined columns when base prompts were used
    stereotype: str | None  # column names, None when the data has none
    counter: str | None
    base_prompts: str | None  # the base_prompts folder joined from, or None
    matched: int  # rows whose prompt matched a base prompt (all rows when nothing was joined)


def stereotype_fields(df: pd.DataFrame, data: str | Path, prompt_col: str, judge_type: str,
                      stereotype_col: str | None = None, counter_col: str | None = None,
                      base_prompts: str | Path | None = None) -> StereotypeFields:
    """Resolve the fields by the order in the module doc; ``data`` is the data file's path
    (for the default base_prompts folder and for messages)."""
    named = stereotype_col or counter_col
    if base_prompts and named:
        raise UserError("--base-prompts supplies the stereotype fields itself; drop --stereotype-col and "
                        "--counter-stereotype-col, or drop --base-prompts")
    in_data = all(c in df for c in tables.STEREOTYPE_COLUMNS)
    if base_prompts is None and judge_type == "rule" and not named and not in_data:
        base_prompts = tables.default_base_prompts(data)
        if base_prompts is None:
            beside = Path(data).resolve().parent.parent / "base_prompts"
            raise UserError(f"{data}: the rule judge needs the stereotype and counter-stereotype of each prompt. "
                            "Name their columns with --stereotype-col and --counter-stereotype-col, or join them "
                            f"from the CLEAR-Bias base prompts with --base-prompts DIR (there is no {beside})")
    if base_prompts is not None:
        joined, unmatched = tables.join_base_prompts(df, tables.read_base_prompts(base_prompts), prompt_col)
        return StereotypeFields(joined, *tables.STEREOTYPE_COLUMNS, str(base_prompts), len(df) - unmatched)
    stereo = stereotype_col or ("STEREOTYPE" if "STEREOTYPE" in df else None)
    counter = counter_col or ("COUNTER-STEREOTYPE" if "COUNTER-STEREOTYPE" in df else None)
    for flag, column in (("--stereotype-col", stereo), ("--counter-stereotype-col", counter)):
        if column is not None and column not in df:
            raise UserError(f"{data}: no column '{column}' ({flag})")
    if judge_type == "rule" and not (stereo and counter):
        raise UserError(f"{data}: the rule judge needs the stereotype and counter-stereotype of each prompt; "
                        "name their columns with --stereotype-col and --counter-stereotype-col, or use --base-prompts DIR")
    return StereotypeFields(df, stereo, counter, None, len(df))
