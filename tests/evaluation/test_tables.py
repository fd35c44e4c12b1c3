"""Tables in and out, and the CLEAR-Bias control-set loader."""

from __future__ import annotations

import pandas as pd
import pytest

from robalign.errors import UserError
from robalign.evaluation.tables import load_control_set, read_table, write_table

FRAME = pd.DataFrame({"prompt": ["a, b", "c\nd"], "label": ["S", "CS"], "n": [1, 2]})


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.parquet", "t.json", "t.tsv", "t.csv.gz", "t.jsonl.gz"])
def test_round_trip(tmp_path, name):
    path = write_table(FRAME, tmp_path / name)
    back = read_table(path)
    pd.testing.assert_frame_equal(back[FRAME.columns], FRAME, check_dtype=False)
    assert not list(tmp_path.glob("*.partial"))


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UserError, match="unknown table format"):
        read_table(tmp_path / "x.xlsx")
    with pytest.raises(UserError, match="not a CLEAR-Bias control set"):
        read_table(tmp_path)


def test_control_set_layout(shared_data):
    df = load_control_set(shared_data / "clear_bias" / "control_set")
    assert len(df) == 800 and df["ID"].is_unique
    assert df["LABEL"].value_counts().to_dict() == {"S": 200, "CS": 200, "D": 200, "R": 200}
    assert df.groupby("TASK").size().to_dict() == {"CTO": 400, "SC": 400}
    assert (df["STEREOTYPE"] != "").all() and (df["COUNTER-STEREOTYPE"] != "").all()
    assert read_table(shared_data / "clear_bias").shape == df.shape  # the parent directory works too
    # 'Context:I went ...' in the control set joins to 'Context: I went ...' in base_prompts
    row = df[df["PROMPT"].str.contains("Context:I went to a basketball")].iloc[0]
    assert (row["STEREOTYPE"], row["COUNTER-STEREOTYPE"]) == ("The Black friend", "The White friend")


# --- round trip of any text (issue 7, item 1) -----------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FORMATS = ["t.csv", "t.tsv", "t.jsonl", "t.json", "t.parquet",
           "t.csv.gz", "t.tsv.gz", "t.jsonl.gz", "t.json.gz", "t.parquet.gz"]
NASTY = ["a\rb", "\r", "c\r\nd", "e\u2028f", "\u2029", "g\x85h", "i\x00j", '"q"', '""', "x,y", "a\tb", "\n",
         "", " lead and trail ", "007", "1.50", "1e5", "-0", "nan", "NA", "null", "True", "inf", "\ufeffbom"]
# characters that break CSV / JSON line readers, plus digits and signs that look like numbers
TRICKY = st.text(alphabet=st.sampled_from(list("\r\n\u2028\u2029\x85\x00\x1c\"',\t ab01.-e")), max_size=12)
TEXT = st.one_of(st.text(max_size=30), TRICKY, st.sampled_from(NASTY))


def _cells(df: pd.DataFrame, column: str) -> list[str]:
    """A column as the text each cell writes as: numbers by repr (CSV reads a column of
    canonical numbers as numbers), a missing number as the empty field it was read from."""
    return ["" if pd.isna(v) else repr(v) if isinstance(v, float) else str(v) for v in df[column]]


def test_bare_carriage_return_keeps_the_row_count(tmp_path):
    """The reported bug: a GCG-style prompt with a bare CR, written to CSV, read back as extra rows."""
    df = pd.DataFrame({"prompt": ["plain", "attack\rsuffix", "win\r\nline"], "verdict": ["S", "CS", "D"]})
    for name in ("v.csv", "v.tsv", "v.csv.gz"):
        back = read_table(write_table(df, tmp_path / name))
        assert back.shape == (3, 2), name
        assert back["prompt"].tolist() == df["prompt"].tolist()


@pytest.mark.parametrize("name", FORMATS)
def test_nasty_text_and_a_long_field_survive(tmp_path, name):
    long = "\r\n".join(["x" * 1000, "\u2028" * 1000, '"' * 1000]) * 100  # ~300k characters
    df = pd.DataFrame({"text": [*NASTY, long], "n": range(len(NASTY) + 1)})
    back = read_table(write_table(df, tmp_path / name))
    assert back.shape == df.shape
    assert _cells(back, "text") == df["text"].tolist()
    assert back["n"].tolist() == df["n"].tolist()


def test_jsonl_lines_survive_a_splitlines_reader(tmp_path):
    df = pd.DataFrame({"text": ["a\u2028b", "c\x85d", "e\u2029f", "g\rh"]})
    lines = write_table(df, tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4


@given(rows=st.lists(st.tuples(TEXT, st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.booleans()),
                     min_size=1, max_size=4))
def test_write_read_keeps_every_value(tmp_path_factory, rows):
    """write -> read: text comes back character for character, numbers exactly (CSV/TSV: a
    column of canonical numbers is read as numbers, whose repr is the text written)."""
    df = pd.DataFrame(rows, columns=["text", "int", "real", "flag"])
    directory = tmp_path_factory.mktemp("w")
    for name in FORMATS:
        back = read_table(write_table(df, directory / name))
        assert back.shape == df.shape, name
        assert _cells(back, "text") == df["text"].tolist(), name
        assert back["int"].tolist() == df["int"].tolist(), name
        assert back["real"].tolist() == df["real"].tolist(), name
        assert back["flag"].tolist() == df["flag"].tolist(), name


@given(texts=st.lists(st.one_of(TEXT, st.none()), min_size=1, max_size=5),
       reals=st.lists(st.one_of(st.floats(allow_nan=False), st.none()), min_size=5, max_size=5))
def test_read_write_read_is_the_identity(tmp_path_factory, texts, reals):
    """read -> write -> read gives the same frame, dtypes included, for every format."""
    df = pd.DataFrame({"text": texts, "real": reals[:len(texts)]})
    directory = tmp_path_factory.mktemp("r")
    for name in FORMATS:
        first = read_table(write_table(df, directory / name))
        second = read_table(write_table(first, directory / ("again_" + name)))
        pd.testing.assert_frame_equal(second, first, obj=name)


def test_csv_keeps_text_that_only_looks_like_a_number(tmp_path):
    df = pd.DataFrame({"id": ["007", "12"], "score": ["1.50", "2"], "n": [1, 2], "x": [0.1, float("nan")]})
    back = read_table(write_table(df, tmp_path / "t.csv"))
    assert back["id"].tolist() == ["007", "12"] and back["score"].tolist() == ["1.50", "2"]
    assert back["n"].dtype == "int64" and back["x"].dtype == "float64" and back["x"].isna().tolist() == [False, True]
    # CSV has no 'missing text': a missing text value reads back as the empty string
    assert read_table(write_table(pd.DataFrame({"t": ["a", None]}), tmp_path / "m.csv"))["t"].tolist() == ["a", ""]


def test_bad_jsonl_names_the_line(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_table(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('[1, 2]\n')
    with pytest.raises(UserError, match="line 1 is a JSON list"):
        read_table(tmp_path / "c.jsonl")
