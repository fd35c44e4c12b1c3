"""`robalign demo`: the whole loop through the CLI on a shrunken demo_quick (a 20-step pre-training,
the un-aligned checkpoint and DPO, the rule judge), then a re-run that finds every cell done. The
full `demo --quick` runs in the slow wheel-install test (tests/test_shipped_configs.py)."""

from __future__ import annotations

import json
import sqlite3

from robalign.cli import main

SMALL = ["grid.method=[none,dpo]", "grid.data.noise_rate=[0.0]", "grid.pretrain.steps=[20]",
         "pretrain.cooldown=0", "bench.clear_bias.judges=[rule]", "bench.clear_bias.samples=1",
         "train.overrides=[training.max_steps=2,training.per_device_batch_size=4,training.save_steps=0]"]


def test_demo_quick_runs_the_loop_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "Headline:" in printed and "Un-aligned model (method=none): clear_bias/safety = " in printed
    assert "After dpo: clear_bias/safety = " in printed  # one noise level: no noise axis
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "Sweep report: demo-quick" in page and page.count("id='cell-") >= 2
    with sqlite3.connect(out / "results.sqlite") as db:
        status = dict(db.execute("select params, status from cells").fetchall())
    assert sorted(json.loads(p)["method"] for p in status) == ["dpo", "none"]
    assert set(status.values()) == {"done"}
    from robalign.experiments.curves import read_curves
    from robalign.experiments.store import Store

    margins = read_curves(Store(f"sqlite:///{out / 'results.sqlite'}"), "demo-quick", ["train/rewards/margins"])
    assert len(margins) and margins["step"].max() == 2  # the dpo cell's logged steps, recorded by the runner

    assert main(["demo", "--quick", "--out", str(out), *SMALL]) == 0  # everything done: nothing re-runs
    again = capsys.readouterr()
    assert "starting" not in again.out + again.err and "2 cells" in again.out
