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
