"""Agreement between a judge and gold labels: accuracy, Cohen's kappa (SE, z, p), macro-F1,
Krippendorff's alpha (nominal), bootstrap CIs, confusion matrix.

Everything is computed from the K x K confusion matrix C (rows = gold, columns = judge),
vectorised over a leading batch axis so 1000 bootstrap resamples of 800 rows take
milliseconds. Notation: n = sum(C), p_ij = C_ij / n, p_i+ = row sums (gold marginals),
p_+j = column sums (judge marginals), p_o = sum_i p_ii, p_e = sum_i p_i+ p_+i.

A judge's UNPARSED / FAILED / JUDGE_REFUSED outputs are categories of their own: they count as
disagreements everywhere (a judge that cannot answer is not rewarded) and are reported.
Macro-F1 averages F1 over the *gold* label set only, so such extra categories lower recall
without adding zero-F1 classes of their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


def label_order(gold: Sequence[str], pred: Sequence[str]) -> list[str]:
    """Gold labels sorted, then labels only the judge used (e.g. UNPARSED) sorted."""
    gold_set = sorted({str(g) for g in gold})
    return gold_set + sorted({str(p) for p in pred} - set(gold_set))


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    C = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(C, ([index[str(g)] for g in gold], [index[str(p)] for p in pred]), 1)
    return C


def _diag(C: np.ndarray) -> np.ndarray:
    return np.einsum("...ii->...i", C)


def accuracy(C: np.ndarray) -> np.ndarray:
    return _diag(C).sum(-1) / C.sum((-1, -2))


def kappa(C: np.ndarray) -> np.ndarray:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e); NaN when p_e = 1 (both raters constant)."""
    P = C / C.sum((-1, -2), keepdims=True)
    po, pe = _diag(P).sum(-1), (P.sum(-1) * P.sum(-2)).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def macro_f1(C: np.ndarray, n_gold_labels: int) -> np.ndarray:
    """Mean over the first ``n_gold_labels`` classes of F1_k = 2 C_kk / (C_k+ + C_+k)."""
    k = slice(0, n_gold_labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * _diag(C)[..., k] / (C.sum(-1)[..., k] + C.sum(-2)[..., k])
    return np.nanmean(f1, axis=-1)


def alpha_two_raters(C: np.ndarray) -> np.ndarray:
    """Krippendorff's alpha (nominal) for two raters with no missing values.
    Coincidence matrix o = C + C^T (N = 2n pairable values, n_c = row sums of o);
    alpha = 1 - (N - 1) * sum_{c != k} o_ck / (N^2 - sum_c n_c^2)."""
    o = C + np.swapaxes(C, -1, -2)
    N = o.sum((-1, -2))
    disagree = N - _diag(o).sum(-1)
    expected = N**2 - (o.sum(-1) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1 - (N - 1) * disagree / expected, np.nan)


def krippendorff_alpha(ratings: Sequence[Sequence[object]]) -> float:
    """Nominal alpha for any number of raters; ``ratings[u][r]`` is rater r's value for unit
    u, None or NaN when missing. Units with fewer than two values are not pairable and drop
    out. Per unit with m_u values and counts n_uc: o += (n_u n_u^T - diag(n_u)) / (m_u - 1)."""
    units = [[v for v in unit if v is not None and not (isinstance(v, float) and math.isnan(v))] for unit in ratings]
    values = sorted({str(v) for unit in units for v in unit})
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for unit in units:
        if len(unit) < 2:
            continue
        counts = np.bincount([index[str(v)] for v in unit], minlength=len(values)).astype(float)
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    n_c, N = o.sum(1), o.sum()
    expected = N**2 - (n_c**2).sum()
    if expected <= 0:
        return float("nan")
    return float(1 - (N - 1) * (N - np.trace(o)) / expected)


@dataclass
class KappaTest:
    kappa: float
    se: float  # large-sample SE for confidence intervals (Fleiss, Cohen & Everitt 1969)
    se0: float  # SE under H0: kappa = 0, used for z
    z: float
    p: float  # two-sided


def kappa_test(C: np.ndarray) -> KappaTest:
    """Cohen's kappa with the Fleiss-Cohen-Everitt (1969) variances:
    var  = [sum_i p_ii (1 - (p_i+ + p_+i)(1 - k))^2 + (1 - k)^2 sum_{i!=j} p_ij (p_+i + p_j+)^2
            - (k - p_e (1 - k))^2] / (n (1 - p_e)^2)
    var0 = [p_e + p_e^2 - sum_i p_i+ p_+i (p_i+ + p_+i)] / (n (1 - p_e)^2)
    z = k / sqrt(var0), p = 2 (1 - Phi(|z|))."""
    n = C.sum()
    P = C / n
    row, col = P.sum(1), P.sum(0)
    pe = float((row * col).sum())
    k = float(kappa(C))
    if not np.isfinite(k):
        return KappaTest(k, float("nan"), float("nan"), float("nan"), float("nan"))
    diag_term = (np.diag(P) * (1 - (row + col) * (1 - k)) ** 2).sum()
    cross = (col[:, None] + row[None, :]) ** 2  # cross[i, j] = (p_+i + p_j+)^2
    off = P * cross
    off_term = (1 - k) ** 2 * (off.sum() - np.trace(off))
    var = (diag_term + off_term - (k - pe * (1 - k)) ** 2) / (n * (1 - pe) ** 2)
    var0 = (pe + pe**2 - (row * col * (row + col)).sum()) / (n * (1 - pe) ** 2)
    se, se0 = math.sqrt(max(var, 0.0)), math.sqrt(max(var0, 0.0))
    z = k / se0 if se0 > 0 else float("nan")
    p = math.erfc(abs(z) / math.sqrt(2)) if np.isfinite(z) else float("nan")
    return KappaTest(k, se, se0, z, p)


def bootstrap_confusions(gold_idx: np.ndarray, pred_idx: np.ndarray, n_labels: int, n_boot: int, seed: int,
                         chunk: int = 200):
    """Yield (b, K, K) confusion matrices of row-resampled data, ``chunk`` resamples at a time."""
    rng = np.random.default_rng(seed)
    codes = gold_idx * n_labels + pred_idx
    n, cells = len(codes), n_labels * n_labels
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        picked = codes[rng.integers(0, n, size=(b, n))] + np.arange(b)[:, None] * cells
        yield np.bincount(picked.ravel(), minlength=b * cells).reshape(b, n_labels, n_labels)


@dataclass
class Agreement:
    name: str
    n: int
    labels: list[str]
    confusion: list[list[int]]  # rows = gold, columns = judge, in ``labels`` order
    accuracy: float
    kappa: KappaTest
    macro_f1: float
    alpha: float
    not_gold_label: dict[str, int]  # judge outputs outside the gold label set (UNPARSED, ...)
    ci: dict[str, list[float]] = field(default_factory=dict)  # metric -> [low, high]
    ci_level: float = 0.95
    n_boot: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(gold: Sequence, pred: Sequence, name: str = "pred", n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> Agreement:
    """All metrics for one judge against gold, with percentile bootstrap CIs (rows resampled
    with replacement, ``n_boot`` times, ``np.random.default_rng(seed)``)."""
    gold, pred = [str(g) for g in gold], [str(p) for p in pred]
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"gold and pred must be non-empty and equally long ({len(gold)} vs {len(pred)})")
    labels = label_order(gold, pred)
    n_gold = len(set(gold))
    C = confusion_matrix(gold, pred, labels)
    result = Agreement(
        name=name, n=len(gold), labels=labels, confusion=C.tolist(), accuracy=float(accuracy(C)),
        kappa=kappa_test(C), macro_f1=float(macro_f1(C, n_gold)), alpha=float(alpha_two_raters(C)),
        not_gold_label={lab: int(C[:, i].sum()) for i, lab in enumerate(labels) if i >= n_gold},
        ci_level=level, n_boot=n_boot, seed=seed,
    )
    if n_boot > 0:
        index = {label: i for i, label in enumerate(labels)}
        g, p = np.array([index[x] for x in gold]), np.array([index[x] for x in pred])
        draws: dict[str, list[np.ndarray]] = {"accuracy": [], "kappa": [], "macro_f1": [], "alpha": []}
        for Cb in bootstrap_confusions(g, p, len(labels), n_boot, seed):
            draws["accuracy"].append(accuracy(Cb))
            draws["kappa"].append(kappa(Cb))
            draws["macro_f1"].append(macro_f1(Cb, n_gold))
            draws["alpha"].append(alpha_two_raters(Cb))
        tail = 100 * (1 - level) / 2
        for metric, chunks in draws.items():
            values = np.concatenate(chunks)
            values = values[np.isfinite(values)]  # kappa is NaN in a resample where both raters are constant
            low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
            result.ci[metric] = [float(low), float(high)]
    return result
