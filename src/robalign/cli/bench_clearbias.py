"""robalign bench clear-bias --model SPEC --judge SPEC [--data PATH_OR_HF_ID] --out RUN

The CLEAR-Bias protocol in one command (docs/bench.md): base prompts -> judge -> safety per
category -> gate at tau -> attacks on the safe categories -> misunderstanding pass ->
post-attack safety and attack effectiveness, every score with a bootstrap CI. Re-running
the same command resumes with no repeated call; ``--dry-run`` prints what it would cost.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model under test: hf:PATH_OR_NAME | openai:MODEL@URL | vllm:PATH")
    p.add_argument("--judge", default="rule", help="rule (baseline) | llm:<model spec>[#bias] (default: rule)")
    p.add_argument("--out", required=True, help="run directory (responses.jsonl, summary.json, report.html)")
    p.add_argument("--data", default=None,
                   help="CLEAR-Bias export folder, HF id (RCantini/CLEAR-Bias), or a CSV/JSONL/Parquet with --columns "
                        "(default: the embedded prompt set)")
    p.add_argument("--columns", default=None,
                   help="column mapping for a table: prompt=COL,category=COL,task=COL,stereotype=COL,"
                        "counter_stereotype=COL")
    p.add_argument("--tau", type=float, default=0.5, help="safety gate: categories with safety >= tau are attacked")
    p.add_argument("--attacks", default=None, help="NAME[,NAME:v2,...] (default: all 7 attacks x 3 variants)")
    p.add_argument("--samples", type=int, default=1, help="answers per prompt (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="model decoding; 0 = greedy")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--system", default=None, help="system message for the model under test")
    p.add_argument("--seed", type=int, default=0, help="decoding and bootstrap seed")
    p.add_argument("--judge-samples", type=int, default=1, help="k-sample majority judge (llm judges)")
    p.add_argument("--second-pass", default=None, metavar="SPEC",
                   help="refusal-vs-misunderstanding judge for attacked R answers, llm:<spec>#misunderstanding")
    p.add_argument("--translator", default=None, metavar="SPEC",
                   help="model spec that translates prompts for machine_translation (when the data has none stored)")
    p.add_argument("--knee", action="store_true", help="drop (attack) pairs above the misunderstanding-rate knee")
    p.add_argument("--limit", type=int, default=None, help="first N prompts per category and task (a quick look)")
    p.add_argument("--control-set", default=None, help="labelled CLEAR-Bias control set for the judge's kappa")
    p.add_argument("--judge-kappa", default=None, help="winner.json / selection.json from robalign judge select")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of prompts (0 = no CIs)")
    p.add_argument("--ci-method", choices=("percentile", "basic", "bca"), default="percentile",
                   help="bootstrap interval (docs/bench.md, 'Coverage of the CIs'); not part of the run's arguments")
    p.add_argument("--max-cost", type=float, default=None, help="stop (resumably) before spending more USD")
    p.add_argument("--dry-run", action="store_true", help="print calls, tokens and cost per phase; send nothing")
    p.add_argument("--restart", action="store_true", help="start RUN over even if it was made with other arguments")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache (no resume)")
    p.add_argument("--cache", default=None, help="cache file (default $ROBALIGN_CACHE/generations.sqlite)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option of the model under test, e.g. -o batch_size=32 (repeatable)")
    p.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option of the LLM judges, e.g. --judge-option concurrency=16 (repeatable)")


def run(args) -> int:
    from robalign.bench.clearbias import ClearBiasConfig, run_clear_bias
    from robalign.bench.prompts import parse_columns
    from robalign.evaluation.options import open_cache, parse_options
    from robalign.evaluation.specs import redact_value
    from robalign.provenance import run_record

    cfg = ClearBiasConfig(
        model=args.model, judge=args.judge, data=args.data, columns=parse_columns(args.columns), tau=args.tau,
        attacks=args.attacks, samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        system=args.system, seed=args.seed, judge_samples=args.judge_samples, second_pass=args.second_pass,
        translator=args.translator, knee=args.knee, limit=args.limit, control_set=args.control_set,
        judge_kappa=args.judge_kappa, n_boot=args.n_boot, ci_method=args.ci_method, options=parse_options(args.option),
        judge_options=parse_options(args.judge_option), max_cost=args.max_cost,
    )
    summary = run_clear_bias(cfg, args.out, open_cache(args.no_cache, args.cache), restart=args.restart,
                             dry_run=args.dry_run, record=run_record(args, redact=redact_value))
    if args.dry_run:
        _print_plan(summary["plan"])
        return 0
    _print_summary(summary, args.out)
    return 0


def _print_plan(plan: dict) -> None:
    print(f"{'phase':36} {'calls':>7} {'cached':>7} {'tokens in':>10} {'tokens out':>10} {'USD':>9}")
    for name, e in [*plan["phases"].items(), ("total", plan["total"])]:
        print(f"{name:36} {e['calls']:7d} {e['cached']:7d} {e['prompt_tokens']:10d} {e['completion_tokens']:10d} "
              f"{e['usd']:9.4f}")


def _print_summary(summary: dict, out: str) -> None:
    from robalign.bench.report import verdict_line

    judge = summary["judge"]
    kappa = f"kappa {judge['kappa']:.3f}" if judge.get("kappa") is not None else "kappa not measured"
    print(f"judge {judge['label']} ({kappa}; {judge.get('kappa_source')})")
    for row in summary.get("category_safety", []):
        ci = row.get("safety_ci") or row.get("ci")
        shown = f"{row['safety']:.2f}" if row.get("safety") is not None else "  - "
        print(f"  {row['category']:30} safety {shown}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
              + ("  attacked" if row.get("attacked") else ""))
    print(verdict_line(summary))
    for note in summary.get("notes", []):
        print(f"note: {note}")
    print(f"costs: {summary['costs']['actual']['usd']:.4f} USD; wall {summary['wall_s']:.1f} s")
    print(f"wrote {out}/responses.jsonl, {out}/summary.json, {out}/report.html")
