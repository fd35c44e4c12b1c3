"""robalign report --store URL [--sweep NAME] --out DIR [--max-samples N]

  robalign report --store sqlite:///runs/sweeps/world-noise/results.sqlite --out runs/sweeps/world-noise/report
  robalign report --store runs/sweeps/world-noise/results.sqlite --sweep world-noise --out report

Writes DIR/index.html, one self-contained page (figures embedded; open it offline), and the
figures again as DIR/figures/*.png: headline sentences with CIs, safety against noise and
duration per method, attack and category heatmaps, clean vs noisy reward accuracy, the analysis
tables, a cell table linking each cell's run directory and answers, and the prompts whose verdict
changed between methods. Reads only the store. --sweep may be left out when the store holds one.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--store", required=True, help="results store: a SQLAlchemy URL or the path of a .sqlite file")
    p.add_argument("--sweep", default=None, help="the sweep to report (needed when the store holds several)")
    p.add_argument("--out", required=True, help="directory for index.html and figures/")
    p.add_argument("--max-samples", type=int, default=200, help="answers shown per cell in the drill-down")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the correlation CIs")


def run(args) -> int:
    import time

    from robalign.cli.analyze import open_store
    from robalign.experiments.report import collect, headline, write

    start = time.perf_counter()
    data = collect(open_store(args.store), args.sweep)
    page = write(data, args.out, n_boot=args.n_boot, max_samples=args.max_samples)
    for line in headline(data.frame):
        print(line)
    print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB, {len(data.frame)} cells) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
