"""Preference loaders: real HH-RLHF and PKU-SafeRLHF files, every file type, column
mapping, Hugging Face datasets on disk, and one test per kind of bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robalign.data.preference import (
    DataError,
    PreferencePair,
    data_fingerprint,
    load_pairs,
    split_holdout,
)
from robalign.data.synthetic import synthetic_pairs

HH = "hh_rlhf_harmless_base/test.jsonl.gz"
PKU = "pku_saferlhf_dpo/pku_seferlhf_realign_dpo_5k.json"
FIELDS = ("id", "prompt", "chosen", "rejected", "soft_label")


def _records(pairs: list[PreferencePair]) -> list[dict]:
    return [{f: getattr(p, f) for f in FIELDS} for p in pairs]


def _write(path: Path, records: list[dict]) -> Path:
    """Write records as the file type its name says (.jsonl/.json/.csv/.parquet, optional .gz)."""
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), path)
        return path
    if ".jsonl" in name:
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif ".json" in name:
        text = json.dumps(records)
    else:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _error(source: Path | str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_pairs(str(source), **kwargs)
    return str(info.value)


ROW = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}


# ---------------------------------------------------------------- real data


def test_hh_rlhf_harmless_test_split(shared_data):
    pairs = load_pairs(str(shared_data / HH), on_invalid="skip")
    assert len(pairs) == 2312 - 4  # 4 rows have an empty chosen reply (data rows 87, 517, 926, 1104)
    for pair in pairs[:200]:
        assert isinstance(pair.prompt, list) and pair.prompt[-1]["role"] == "user"
        assert {m["role"] for m in pair.prompt} <= {"user", "assistant"}
        assert pair.chosen != pair.rejected and pair.chosen == pair.chosen.strip()
    first = pairs[0]  # read by hand from the first line of the file
    assert first.id == "test-0"
    assert first.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first.prompt[-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    assert first.rejected.startswith("There are lots of funny things you can do with pens")


def test_hh_rlhf_strict_mode_names_the_empty_reply(shared_data):
    message = _error(shared_data / HH)
    assert HH.split("/")[-1] in message and "row 87" in message and "column 'chosen'" in message
    assert "on_invalid=skip" in message


def test_pku_realign_file_chosen_is_the_safer_response(shared_data):
    pairs = load_pairs(str(shared_data / PKU))  # auto: prompt + response=[safer, less safe]
    raw = json.loads((shared_data / PKU).read_text(encoding="utf-8"))
    assert len(pairs) == len(raw) == 5135
    for i in (0, 1, 2500, 5134):
        assert pairs[i].prompt == raw[i]["prompt"]
        assert (pairs[i].chosen, pairs[i].rejected) == tuple(raw[i]["response"])
        assert pairs[i].meta == {"chosen_safe": True, "rejected_safe": False}
        assert pairs[i].id == f"pku_seferlhf_realign_dpo_5k-{i}"
    # row 0 read by hand: the safe answer discourages revenge, the unsafe one suggests spreading the truth
    assert pairs[0].prompt.startswith("I recently ran into my bully from school")
    assert pairs[0].chosen.startswith("It's not advisable to try and get back at your bully")
    assert "spreading the truth about your bully" in pairs[0].rejected


def test_pku_raw_columns(tmp_path):
    rows = [{"prompt": "How do I pick a lock?", "response_0": "Here is how: ...", "response_1": "I can't help.",
             "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True},
            {"prompt": "Is tea healthy?", "response_0": "Yes, in moderation.", "response_1": "Drink bleach.",
             "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False}]
    for name in ("pku.jsonl", "pku.csv"):  # CSV carries the ids and flags as text
        pairs = load_pairs(str(_write(tmp_path / name, rows)))
        assert [(p.chosen, p.rejected) for p in pairs] == [("I can't help.", "Here is how: ..."),
                                                           ("Yes, in moderation.", "Drink bleach.")]
        assert [p.meta for p in pairs] == [{"chosen_safe": True, "rejected_safe": False}] * 2
    bad = _write(tmp_path / "bad.jsonl", [{**rows[0], "safer_response_id": 2}])
    assert "row 1" in (m := _error(bad)) and "safer_response_id" in m


# ---------------------------------------------------------------- file types, mapping, sources


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.parquet", "d.jsonl.gz", "d.json.gz", "d.csv.gz"])
def test_round_trip_every_file_type(tmp_path, name):
    pairs = synthetic_pairs(n=30)
    pairs[3] = PreferencePair("hard", pairs[3].prompt, pairs[3].chosen, pairs[3].rejected)  # no soft label
    loaded = load_pairs(str(_write(tmp_path / name, _records(pairs))))
    assert loaded == pairs
    assert data_fingerprint(loaded) == data_fingerprint(pairs)


@pytest.mark.parametrize("name", ["m.jsonl", "m.json.gz", "m.parquet"])
def test_chat_message_prompts_round_trip(tmp_path, name):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    loaded = load_pairs(str(_write(tmp_path / name, [{**ROW, "prompt": prompt}])))
    assert loaded[0].prompt == prompt


def test_json_records_under_a_top_level_key(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 2, "data": [ROW]}))
    assert load_pairs(str(path))[0].chosen == "Hi!"
    path.write_text(json.dumps({"train": [ROW], "test": [{**ROW, "chosen": "Hello"}]}))
    assert load_pairs(str(path), split="test")[0].chosen == "Hello"
    assert "data.split" in _error(path, split="dev")


def test_column_mapping(tmp_path):
    rows = [{"question": "Q1", "good": "yes", "bad": "no", "score": 0.8, "uid": "a"},
            {"question": "Q2", "good": "sure", "bad": "never", "score": "", "uid": "b"}]
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad", "soft_label": "score", "id": "uid"}
    pairs = load_pairs(str(_write(tmp_path / "q.csv", rows)), columns=mapping)
    assert pairs == [PreferencePair("a", "Q1", "yes", "no", 0.8), PreferencePair("b", "Q2", "sure", "never", None)]


def test_hf_dataset_saved_to_disk_and_directory_of_files(tmp_path):
    import datasets

    records = _records(synthetic_pairs(n=12))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    expected = load_pairs("synthetic:12")
    assert load_pairs(str(tmp_path / "saved")) == expected
    assert load_pairs(f"hf:{tmp_path / 'saved'}") == expected
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:8]),
                                   "test": datasets.Dataset.from_list(records[8:])})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load_pairs(f"hf:{tmp_path / 'dict'}", split="test") == expected[8:]
    assert "no split 'dev'" in _error(f"hf:{tmp_path / 'dict'}", split="dev")
    (tmp_path / "files").mkdir()
    _write(tmp_path / "files" / "train.jsonl", records)
    assert load_pairs(f"hf:{tmp_path / 'files'}") == expected


def test_hf_dataset_without_ids_gets_derived_ids(tmp_path):
    import datasets

    datasets.Dataset.from_list([ROW, {**ROW, "chosen": "Hello"}]).save_to_disk(str(tmp_path / "noid"))
    assert [p.id for p in load_pairs(str(tmp_path / "noid"))] == ["noid-train-0", "noid-train-1"]


def test_hf_unknown_dataset_offline_is_a_data_error():
    message = _error("hf:robalign-no-such-org/no-such-dataset")
    assert "hf:robalign-no-such-org/no-such-dataset" in message and "could not load" in message


def test_synthetic_sources_and_limit(tmp_path):
    assert len(load_pairs("synthetic")) == 400
    assert load_pairs("synthetic:12") == synthetic_pairs(n=12)
    assert load_pairs("synthetic:12", limit=5) == synthetic_pairs(n=12)[:5]
    path = _write(tmp_path / "d.jsonl", _records(synthetic_pairs(n=20)))
    assert [p.id for p in load_pairs(str(path), limit=3)] == ["syn-00000", "syn-00001", "syn-00002"]
    assert "synthetic:N" in _error("synthetic:many")
    assert "limit" in _error(path, limit=0)


def test_derived_ids_use_the_file_stem_and_row_index(tmp_path):
    path = _write(tmp_path / "prefs.jsonl.gz", [ROW, {**ROW, "chosen": "Hello"}])
    assert [p.id for p in load_pairs(str(path))] == ["prefs-0", "prefs-1"]


# ---------------------------------------------------------------- bad input


def test_missing_file_and_unknown_extension(tmp_path):
    assert str(tmp_path / "nope.jsonl") in (m := _error(tmp_path / "nope.jsonl")) and "hf:" in m
    (tmp_path / "d.txt").write_text("prompt\n")
    assert "d.txt" in (m := _error(tmp_path / "d.txt")) and "'.txt'" in m and ".parquet" in m


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROW) + "\n\n" + '{"prompt": "x", "chosen": \n')
    message = _error(path)
    assert "broken.jsonl" in message and "line 3" in message and "not valid JSON" in message
    (tmp_path / "broken.json").write_text("[{]")
    assert "broken.json" in (m := _error(tmp_path / "broken.json")) and "line 1" in m


def test_not_gzip_and_not_utf8(tmp_path):
    (tmp_path / "fake.jsonl.gz").write_text(json.dumps(ROW))
    assert "fake.jsonl.gz" in (m := _error(tmp_path / "fake.jsonl.gz")) and "gzip" in m
    (tmp_path / "latin.csv").write_bytes("prompt,chosen,rejected\ncaf\xe9,a,b\n".encode("latin-1"))
    assert "latin.csv" in (m := _error(tmp_path / "latin.csv")) and "UTF-8" in m


def test_missing_column_lists_found_columns_and_suggests_mapping(tmp_path):
    path = _write(tmp_path / "q.jsonl", [{"question": "Q", "chosen": "a", "rejected": "b"}])
    message = _error(path, format="pairs")
    assert "q.jsonl" in message and "row 1" in message and "missing column 'prompt'" in message
    assert "question, chosen, rejected" in message and "data.columns={prompt: question}" in message
    message = _error(path)  # auto cannot tell the format either
    assert "q.jsonl" in message and "question" in message and "data.columns={prompt: question}" in message
    assert "'nope'" in (m := _error(path, columns={"prompt": "nope"})) and "question" in m
    assert "unknown field" in _error(path, columns={"query": "question"})


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
@pytest.mark.parametrize("value", ["", "   \n", None])
def test_empty_text_names_file_row_and_column(tmp_path, field, value):
    path = _write(tmp_path / "e.jsonl", [ROW, {**ROW, field: value}])
    message = _error(path)
    assert "e.jsonl" in message and "row 2" in message and f"column '{field}'" in message and "empty" in message


def test_empty_csv_cell(tmp_path):
    path = _write(tmp_path / "e.csv", [ROW, ROW, {**ROW, "rejected": ""}])
    message = _error(path)
    assert "e.csv" in message and "row 3" in message and "column 'rejected'" in message


def test_chosen_identical_to_rejected(tmp_path):
    path = _write(tmp_path / "same.jsonl", [ROW, {**ROW, "rejected": " Hi!"}])
    message = _error(path)
    assert "same.jsonl" in message and "row 2" in message and "no preference" in message


@pytest.mark.parametrize("soft_label", ["high", 1.5, -0.1, True, float("nan"), [0.5]])
def test_bad_soft_label(tmp_path, soft_label):
    path = tmp_path / "soft.jsonl"
    path.write_text(json.dumps({**ROW, "soft_label": soft_label}) + "\n")  # NaN: Python writes a bare NaN
    message = _error(path)
    assert "soft.jsonl" in message and "row 1" in message and "column 'soft_label'" in message and "[0, 1]" in message


def test_soft_label_range_edges_are_fine(tmp_path):
    path = _write(tmp_path / "edges.csv", [{**ROW, "soft_label": 0}, {**ROW, "chosen": "Yo", "soft_label": "1"}])
    assert [p.soft_label for p in load_pairs(str(path))] == [0.0, 1.0]


def test_chat_prompt_must_end_with_a_user_turn(tmp_path):
    prompt = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    message = _error(_write(tmp_path / "chat.jsonl", [{**ROW, "prompt": prompt}]))
    assert "chat.jsonl" in message and "row 1" in message and "user turn" in message


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path / "dup.csv", [{**ROW, "id": "x"}, {**ROW, "id": "y"}, {**ROW, "id": "x"}])
    message = _error(path)
    assert "dup.csv" in message and "row 3" in message and "duplicate id 'x'" in message and "row 1" in message


def test_unknown_format_and_empty_data_set(tmp_path):
    assert "unknown data format 'hh'" in (m := _error("synthetic", format="hh")) and "hh_rlhf" in m
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "empty.jsonl" in (m := _error(tmp_path / "empty.jsonl")) and "empty data set" in m
    (tmp_path / "header.csv").write_text("prompt,chosen,rejected\n")
    assert "header.csv" in _error(tmp_path / "header.csv")
    (tmp_path / "none.json").write_text("[]")
    assert "none.json" in _error(tmp_path / "none.json")


# ---------------------------------------------------------------- HH-RLHF dialogues


def _hh(prompt: str, chosen: str, rejected: str) -> dict:
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def test_hh_split_at_the_shared_prefix(tmp_path):
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Insult me.\n\nAssistant:"
    rows = [_hh(prompt, " No, let's be kind. ", " You are dumb."),
            _hh("\n\nHuman: A\n\nAssistant: B\n\nAssistant: C\n\nHuman: D\n\nAssistant:", " Sure", " Sure thing")]
    first, second = load_pairs(str(_write(tmp_path / "hh.jsonl", rows)))  # auto detects hh_rlhf
    assert first.prompt == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                            {"role": "user", "content": "Insult me."}]
    assert (first.chosen, first.rejected) == ("No, let's be kind.", "You are dumb.")
    assert second.prompt[1] == {"role": "assistant", "content": "B\n\nC"}  # repeated turns merged
    assert (second.chosen, second.rejected) == ("Sure", "Sure thing")


def test_hh_dialogue_without_assistant_turn(tmp_path):
    rows = [_hh("\n\nHuman: Hi\n\nAssistant:", " a", " b"), {"chosen": "\n\nHuman: Hi\n\nAssistant: a",
                                                             "rejected": "\n\nHuman: Hi there"}]
    message = _error(_write(tmp_path / "hh.jsonl", rows), format="hh_rlhf")
    assert "hh.jsonl" in message and "row 2" in message and "column 'rejected'" in message
    assert "\\n\\nAssistant:" in message


def test_on_invalid_skip_drops_only_bad_content_rows(tmp_path, caplog):
    path = _write(tmp_path / "mixed.jsonl", [ROW, {**ROW, "chosen": ""}, {**ROW, "chosen": "Hello"},
                                             {**ROW, "rejected": "Hi!"}])
    with caplog.at_level(logging.WARNING, logger="robalign.data.preference"):
        pairs = load_pairs(str(path), on_invalid="skip")
    assert [p.id for p in pairs] == ["mixed-0", "mixed-2"]
    assert "skipped 2 invalid row(s)" in caplog.text and "2, 4" in caplog.text
    assert "on_invalid" in _error(path, on_invalid="ignore")


# ---------------------------------------------------------------- hold-out and fingerprint


def test_split_holdout_is_seeded_disjoint_and_keeps_prompts_together():
    pairs = synthetic_pairs(n=200)
    train, held = split_holdout(pairs, 0.2, seed=0)
    assert split_holdout(pairs, 0.2, seed=0) == (train, held)
    assert split_holdout(pairs, 0.2, seed=1)[1] != held
    assert len(held) >= 40 and len(train) + len(held) == 200
    assert {p.id for p in train}.isdisjoint(p.id for p in held)
    assert {p.prompt for p in train}.isdisjoint(p.prompt for p in held)
    assert [p.id for p in train] == sorted(p.id for p in train)  # input order kept
    assert split_holdout(pairs, 0.0, seed=0) == (pairs, [])
    with pytest.raises(ValueError):
        split_holdout(pairs, 1.0, seed=0)
    with pytest.raises(DataError, match="share one prompt"):
        split_holdout([PreferencePair(str(i), "same", "a", "b") for i in range(5)], 0.2, seed=0)


def test_data_fingerprint_is_order_and_label_sensitive():
    pairs = synthetic_pairs(n=10)
    fingerprint = data_fingerprint(pairs)
    assert len(fingerprint) == 64 and fingerprint == data_fingerprint(synthetic_pairs(n=10))
    assert data_fingerprint(pairs[::-1]) != fingerprint
    changed = [PreferencePair(p.id, p.prompt, p.chosen, p.rejected, 0.5, p.meta) for p in pairs]
    assert data_fingerprint(changed) != fingerprint
    relabelled = [PreferencePair(p.id, p.prompt, p.chosen, p.rejected, p.soft_label, {}) for p in pairs]
    assert data_fingerprint(relabelled) == fingerprint  # meta is not data


def test_pku_realign_shape_errors(tmp_path):
    rows = [{"prompt": "p", "response": ["safe", "unsafe"]}, {"prompt": "p", "response": ["safe", " "]}]
    message = _error(_write(tmp_path / "realign.json", rows))
    assert "realign.json" in message and "row 2" in message and "column 'response[1]'" in message
    message = _error(_write(tmp_path / "three.json", [{"prompt": "p", "response": ["a", "b", "c"]}]))
    assert "three.json" in message and "row 1" in message and "[safer, less safe]" in message
