"""Agreement of a table's judge columns with its gold column, and between the judges
(``robalign judge agreement``). The statistics are in ``agreement``; this module decides
which cells count.

- A row whose gold label is missing or blank is dropped, and counted.
- A judge cell that is missing or blank becomes MISSING. Against gold, MISSING, UNPARSED,
  JUDGE_REFUSED and FAILED are judge outputs of their own and count as disagreements (a judge that
  cannot answer is not rewarded; ``agreement`` lists them under ``not_gold_label``).
- Between judges (Krippendorff's alpha over the judge columns) they are missing values,
  as alpha defines them: a row where two judges both failed carries no evidence that they
  agree, and a row with fewer than two real verdicts drops out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.agreement import Agreement, agreement, krippendorff_alpha
from robalign.evaluation.labels import MISSING, NON_VERDICTS


def judge_labels(column: pd.Series) -> list[str]:
    """A judge column as labels: each value's text, MISSING for a missing or blank cell."""
    return [MISSING if pd.isna(v) or not str(v).strip() else str(v) for v in column]


def alpha_between_judges(df: pd.DataFrame, columns: Sequence[str]) -> float:
    """Nominal Krippendorff's alpha over ``columns`` (raters), one unit per row, with
    the non-verdicts (UNPARSED / FAILED / JUDGE_REFUSED / MISSING, ``labels.NON_VERDICTS``) as missing values; NaN when fewer than two real verdicts
    pair up anywhere or every real verdict is the same."""
    raters = [[None if v in NON_VERDICTS else v for v in judge_labels(df[c])] for c in columns]
    return krippendorff_alpha([list(unit) for unit in zip(*raters)])


@dataclass
class TableAgreement:
    gold: str
    rows: int  # rows with a gold label
    dropped_rows_without_gold: int
    judges: list[Agreement]
    alpha_between_judges: float | None  # None with a single judge column

    def to_dict(self) -> dict:
        out = {"gold": self.gold, "rows": self.rows, "dropped_rows_without_gold": self.dropped_rows_without_gold,
               "judges": [r.to_dict() for r in self.judges]}
        if self.alpha_between_judges is not None:
            out["alpha_between_judges"] = self.alpha_between_judges
        return out


def table_agreement(df: pd.DataFrame, gold: str, preds: Sequence[str], n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> TableAgreement:
    """Every judge column against ``gold`` (see ``agreement.agreement``), and alpha between
    the judge columns when there are several, after the cleaning in the module doc."""
    keep = df[gold].notna() & (df[gold].astype(str).str.strip() != "")
    kept = df[keep]
    if kept.empty:
        raise UserError(f"no row has a gold label in column '{gold}' (all {len(df)} are empty); "
                        "check --gold")
    gold_labels = kept[gold].astype(str)
    reports = [agreement(gold_labels, judge_labels(kept[col]), name=col, n_boot=n_boot, seed=seed, level=level)
               for col in preds]
    alpha = alpha_between_judges(kept, preds) if len(preds) > 1 else None
    return TableAgreement(gold, int(len(kept)), int((~keep).sum()), reports, alpha)
