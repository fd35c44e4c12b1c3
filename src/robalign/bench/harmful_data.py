"""Harmful-prompt sets for ``robalign bench harmful``: the shared public sets and any table.

Every loader returns a ``HarmfulSet`` of ``HarmfulPrompt`` rows with a stable ``id``, the
``prompt`` the model under test receives, a ``category`` for the per-category breakdown and
a ``label``: ``unsafe`` for a request a model should not carry out (it counts towards the
attack success rate) or ``safe`` for a benign request (it counts towards over-refusal).

| name            | file under the shared data folder              | rows  | category / type                 |
|-----------------|-----------------------------------------------|-------|---------------------------------|
| advbench        | advbench/harmful_behaviors.csv (``goal``)       | 520   | none in the data: uncategorised |
| harmbench       | harmbench/harmbench_behaviors_text_all.csv      | 300 of 400 | SemanticCategory / FunctionalCategory |
| harmbench:test  | harmbench/harmbench_behaviors_text_test.csv     | 240 of 320 | as above                  |
| harmbench:val   | harmbench/harmbench_behaviors_text_val.csv      | 60 of 80   | as above                  |
| jbb             | jailbreakbench/harmful-behaviors.csv (``Goal``) | 100   | Category / Behavior             |
| jbb:benign      | jailbreakbench/benign-behaviors.csv (all safe)  | 100   | Category / Behavior             |
| donotanswer     | do_not_answer/do_not_answer_en.csv (``question``) | 939 | risk_area / types_of_harm        |
| xstest          | xstest/xstest_prompts.csv                       | 450 (250 safe, 200 unsafe) | type / focus |

Ids: ``advbench/000`` (row number), ``harmbench/<BehaviorID>``, ``jbb/harmful/000`` and
``jbb/benign/000`` (the data's ``Index``: a harmful and a benign row with the same number
are topic-matched), ``donotanswer/000`` (the data's ``id``), ``xstest/001`` (its ``id``).

HarmBench. Copyright behaviours (100 of 400: "generate the lyrics of ...") are excluded:
they are graded by hashing the output against the source text, not by a safety judge;
``HarmfulSet.excluded`` holds their count. A contextual behaviour (100) is a request about a
passage; the model receives the passage, a line holding ``---`` between blank lines, and
the request: ``f"{context}\\n\\n---\\n\\n{behavior}"`` (the layout HarmBench's own
generation uses). The judge sees the same combined text as the prompt.

Any table (``--dataset PATH``: CSV / TSV / JSONL / JSON / Parquet, read by
``robalign.evaluation.tables.read_table``) needs a ``prompt`` column (any case); it may have
``id`` (unique; else ``row/00001``, the 1-based row number), ``category`` (else
uncategorised), ``label`` (``safe`` / ``unsafe``; else unsafe), ``type`` and ``context``
(combined as for HarmBench). Rows are numbered from 1, the first row after a header.

``limit(n)`` keeps the first ``n`` prompts of every (label, category), so a quick look still
covers every category and both XSTest halves.

The shared folder is ``--data-root``, else ``$ROBALIGN_SHARED_DATA``, else ``../shared/data``
from the working directory or from the repository checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from robalign.errors import UserError

SAFE, UNSAFE = "safe", "unsafe"  # a request to comply with / to refuse (not judge verdicts)
UNCATEGORISED = "uncategorised"
CONTEXT_SEPARATOR = "\n\n---\n\n"  # between a HarmBench context passage and its request


@dataclass(frozen=True)
class HarmfulPrompt:
    id: str
    prompt: str  # the text the model under test receives (context passage included)
    category: str
    label: str = UNSAFE  # UNSAFE: counts towards ASR; SAFE: towards over-refusal
    type: str = ""  # finer grouping the data gives (XSTest type, HarmBench functional category, ...)
    request: str = ""  # the request alone, without a context passage
    context: str = ""


@dataclass
class HarmfulSet:
    name: str  # "advbench", "harmbench:test", or the path of a table
    source: str  # the file read
    prompts: list[HarmfulPrompt]
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows left out (HarmBench copyright)

    def frame(self) -> pd.DataFrame:
        columns = list(HarmfulPrompt.__dataclass_fields__)
        return pd.DataFrame([asdict(p) for p in self.prompts], columns=columns)

    def fingerprint(self) -> str:
        """sha256 over every field of every prompt, in order (run directories compare it on resume)."""
        blob = json.dumps([asdict(p) for p in self.prompts], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def limit(self, n: int | None) -> HarmfulSet:
        """The first ``n`` prompts of every (label, category); the set itself for None."""
        if n is None:
            return self
        if n < 1:
            raise UserError(f"--limit must be >= 1, got {n}")
        seen: Counter[tuple[str, str]] = Counter()
        kept = []
        for p in self.prompts:
            seen[(p.label, p.category)] += 1
            if seen[(p.label, p.category)] <= n:
                kept.append(p)
        return replace(self, prompts=kept)

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.label for p in self.prompts))


def find_data_root(data_root: str | Path | None = None) -> Path:
    """The shared data folder (see the module doc for the search order)."""
    if data_root:
        root = Path(data_root)
        if not root.is_dir():
            raise UserError(f"--data-root {root} is not a directory")
        return root
    candidates = []
    if os.environ.get("ROBALIGN_SHARED_DATA"):
        candidates.append(Path(os.environ["ROBALIGN_SHARED_DATA"]))
    candidates += [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"]
    for root in candidates:
        if root.is_dir():
            return root.resolve()
    raise UserError("cannot find the shared data folder (tried $ROBALIGN_SHARED_DATA and ../shared/data); "
                    "pass --data-root DIR, the folder holding advbench/, harmbench/, ...")


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} does not exist; --data-root must point at the shared data folder "
                        f"(the one holding {path.parent.name}/)")
    # keep_default_na=False: HarmBench's empty Tags / ContextString stay "" (PROVENANCE.md)
    return pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8")


def load_advbench(root: Path) -> HarmfulSet:
    path = root / "advbench" / "harmful_behaviors.csv"
    df = _read(path)
    prompts = [HarmfulPrompt(f"advbench/{i:03d}", goal, UNCATEGORISED, request=goal) for i, goal in enumerate(df["goal"])]
    return HarmfulSet("advbench", str(path), prompts)


def harmbench_prompt(behavior: str, context: str) -> str:
    """What the model receives for a HarmBench behaviour (see the module doc)."""
    return f"{context}{CONTEXT_SEPARATOR}{behavior}" if context.strip() else behavior


HARMBENCH_FILES = {"all": "harmbench_behaviors_text_all.csv", "test": "harmbench_behaviors_text_test.csv",
                   "val": "harmbench_behaviors_text_val.csv"}


def load_harmbench(root: Path, split: str = "all") -> HarmfulSet:
    path = root / "harmbench" / HARMBENCH_FILES[split]
    df = _read(path)
    prompts, copyright_rows = [], 0
    for row in df.itertuples(index=False):
        if row.FunctionalCategory == "copyright":
            copyright_rows += 1
            continue
        prompts.append(HarmfulPrompt(f"harmbench/{row.BehaviorID}", harmbench_prompt(row.Behavior, row.ContextString),
                                     row.SemanticCategory, type=row.FunctionalCategory, request=row.Behavior,
                                     context=row.ContextString))
    name = "harmbench" if split == "all" else f"harmbench:{split}"
    return HarmfulSet(name, str(path), prompts, {"copyright": copyright_rows})


def load_jbb(root: Path, benign: bool = False) -> HarmfulSet:
    kind = "benign" if benign else "harmful"
    path = root / "jailbreakbench" / f"{kind}-behaviors.csv"
    df = _read(path)
    prompts = [HarmfulPrompt(f"jbb/{kind}/{int(row.Index):03d}", row.Goal, row.Category, SAFE if benign else UNSAFE,
                             type=row.Behavior, request=row.Goal) for row in df.itertuples(index=False)]
    return HarmfulSet("jbb:benign" if benign else "jbb", str(path), prompts)


def load_donotanswer(root: Path) -> HarmfulSet:
    path = root / "do_not_answer" / "do_not_answer_en.csv"
    df = _read(path)
    prompts = [HarmfulPrompt(f"donotanswer/{int(row.id):03d}", row.question, row.risk_area, type=row.types_of_harm,
                             request=row.question) for row in df.itertuples(index=False)]
    return HarmfulSet("donotanswer", str(path), prompts)


def load_xstest(root: Path) -> HarmfulSet:
    """250 safe prompts (over-refusal) and 200 unsafe contrast prompts; category = XSTest type."""
    path = root / "xstest" / "xstest_prompts.csv"
    df = _read(path)
    prompts = [HarmfulPrompt(f"xstest/{int(row.id):03d}", row.prompt, row.type, row.label, type=row.focus,
                             request=row.prompt) for row in df.itertuples(index=False)]
    bad = [p.id for p in prompts if p.label not in (SAFE, UNSAFE)]
    if bad:
        raise UserError(f"{path}: label must be safe or unsafe (rows {', '.join(bad[:5])})")
    return HarmfulSet("xstest", str(path), prompts)


DATASETS = {
    "advbench": load_advbench,
    "harmbench": load_harmbench,
    "harmbench:test": lambda root: load_harmbench(root, "test"),
    "harmbench:val": lambda root: load_harmbench(root, "val"),
    "jbb": load_jbb,
    "jbb:benign": lambda root: load_jbb(root, benign=True),
    "donotanswer": load_donotanswer,
    "xstest": load_xstest,
}


def load_harmful_set(dataset: str, data_root: str | Path | None = None, limit: int | None = None) -> HarmfulSet:
    """A shared set by name (``DATASETS``) or any table with a ``prompt`` column."""
    name = str(dataset).strip()
    if name.lower() in DATASETS:
        loaded = DATASETS[name.lower()](find_data_root(data_root))
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"--dataset '{name}' is neither a known set ({', '.join(DATASETS)}) nor an existing "
                            "file; pass a set name or the path of a CSV / JSONL / Parquet file with a 'prompt' column")
        loaded = load_table_set(path)
    return loaded.limit(limit)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    return str(value)


def _column(df: pd.DataFrame, name: str) -> str | None:
    return next((c for c in df.columns if str(c).strip().lower() == name), None)


def load_table_set(path: str | Path) -> HarmfulSet:
    """A user's table: ``prompt`` required; ``id``, ``category``, ``label``, ``type``, ``context``
    optional (see the module doc). Errors name the file, the 1-based row and the fix."""
    from robalign.evaluation.tables import read_table

    path = Path(path)
    df = read_table(path).reset_index(drop=True)
    prompt_col = _column(df, "prompt")
    if prompt_col is None:
        raise UserError(f"{path}: no 'prompt' column (columns: {', '.join(map(str, df.columns)) or 'none'}); "
                        "rename the column that holds the requests to 'prompt'")
    if df.empty:
        raise UserError(f"{path}: no rows; the file needs one request per row in its 'prompt' column")
    cols = {name: _column(df, name) for name in ("id", "category", "label", "type", "context")}
    prompts, first_row = [], {}
    for i, row in enumerate(df.to_dict(orient="records"), 1):
        get = {name: _cell(row[col]).strip() if col is not None else "" for name, col in cols.items()}
        request = _cell(row[prompt_col])
        if not request.strip():
            raise UserError(f"{path}: row {i} has an empty prompt; fill it or remove the row "
                            "(rows are numbered from 1, the first row after the header)")
        label = get["label"].lower() or UNSAFE
        if label not in (SAFE, UNSAFE):
            raise UserError(f"{path}: row {i} has label '{get['label']}'; a label must be 'unsafe' (a request to "
                            "refuse, counted in the attack success rate) or 'safe' (counted in over-refusal)")
        row_id = get["id"] or f"row/{i:05d}"
        if row_id in first_row:
            raise UserError(f"{path}: rows {first_row[row_id]} and {i} share the id '{row_id}'; ids must be unique "
                            "(fix them, or drop the id column to number the rows)")
        first_row[row_id] = i
        prompts.append(HarmfulPrompt(row_id, harmbench_prompt(request, get["context"]), get["category"] or UNCATEGORISED,
                                     label, type=get["type"], request=request, context=get["context"]))
    return HarmfulSet(str(path), str(path), prompts)
