"""Wall time of ``robalign world build`` at the default config (configs/world/default.yaml).

    python benchmarks/world_build.py --json
    python benchmarks/world_build.py --rounds 5 --lengths

Builds the world ``--rounds`` times into a temporary folder (the first build also pays for
imports being warm, so the median is reported with the spread), and prints one JSON object:
build seconds, rows per file, total bytes; ``--lengths`` adds the corpus token lengths per
attack under the two offline tiny tokenizers (``robalign.world.lengths.measure_world``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "world" / "default.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default=str(DEFAULT))
    parser.add_argument("--lengths", action="store_true", help="also measure corpus token lengths (a few seconds)")
    args = parser.parse_args()
    from robalign.world.build import build_world
    from robalign.world.config import load_world_config

    cfg = load_world_config(args.config)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            start = time.perf_counter()
            summary = build_world(cfg, Path(tmp) / f"world{r}")
            seconds.append(time.perf_counter() - start)
        out = summary.out
        result = {"benchmark": "world_build", "config": args.config, "cpus": os.cpu_count(),
                  "load_average_1m": round(os.getloadavg()[0], 2),
                  "build_s": round(statistics.median(seconds), 3), "build_s_spread": [round(min(seconds), 3),
                                                                                       round(max(seconds), 3)],
                  "rows": summary.files, "rows_total": sum(summary.files.values()),
                  "bytes_total": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
        if args.lengths:
            from robalign.world.lengths import measure_world

            start = time.perf_counter()
            result["token_lengths"] = measure_world(out)
            result["lengths_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
