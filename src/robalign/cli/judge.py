"""robalign judge run | agreement | select | pairwise

  robalign judge run --judge rule --data ../shared/data/clear_bias/control_set --out runs/judge/rule.csv
  robalign judge run --judge rule --data ../shared/data/clear_bias/control_set/control_set_CTO.csv \
      --prompt-col PROMPT --response-col RESPONSE --out runs/judge/rule_cto.csv   # joins ../base_prompts
  robalign judge agreement --data runs/judge/rule.csv --gold LABEL --pred judge_verdict
  robalign judge select --control-set ../shared/data/clear_bias/control_set --judges configs/judges/control_set.yaml
  robalign judge pairwise --judge llm:openai:m@http://127.0.0.1:8000/v1 --data answers.jsonl \
      --reference-col chosen --out runs/judge/pairwise.csv                      # win rate vs a reference
"""

from __future__ import annotations

from pathlib import Path


def _cache_flags(p) -> None:
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    p.add_argument("--cache", default=None, help="cache file (default $ROBALIGN_CACHE/generations.sqlite)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option for LLM judges, e.g. -o concurrency=4 -o timeout=30 (repeatable)")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="apply a judge to a file of saved responses")
    run.add_argument("--judge", required=True, help="rule | keyword | llm:<model spec>[#template]")
    run.add_argument("--data", required=True, help=".csv/.jsonl/.parquet, or a CLEAR-Bias control_set directory")
    run.add_argument("--out", required=True, help="output table (.csv/.jsonl/.parquet): input rows + verdicts")
    run.add_argument("--prompt-col", default=None, help="prompt column (default: a column named 'prompt', any case)")
    run.add_argument("--response-col", default=None, help="response column (default: 'response', any case)")
    run.add_argument("--stereotype-col", default=None, help="stereotype field for the rule judge (default STEREOTYPE)")
    run.add_argument("--counter-stereotype-col", default=None,
                     help="counter-stereotype field for the rule judge (default COUNTER-STEREOTYPE)")
    run.add_argument("--base-prompts", default=None, metavar="DIR",
                     help="join STEREOTYPE / COUNTER-STEREOTYPE by prompt text from this CLEAR-Bias base_prompts "
                          "folder (default for the rule judge when the data lacks them: base_prompts beside the "
                          "data file's folder, if there is one)")
    run.add_argument("--second-pass", default=None, metavar="SPEC",
                     help="R-vs-M judge for rows judged R, e.g. llm:openai:m@http://host/v1#misunderstanding")
    run.add_argument("--prefix", default="judge_", help="prefix of the added columns (default judge_)")
    run.add_argument("--limit", type=int, default=None, help="judge only the first N rows")
    _cache_flags(run)

    agree = sub.add_parser("agreement", help="agreement of judge columns with a gold column")
    agree.add_argument("--data", required=True, help=".csv/.jsonl/.parquet with gold and judge columns")
    agree.add_argument("--gold", required=True, help="gold label column")
    agree.add_argument("--pred", required=True, help="judge column(s), comma separated")
    agree.add_argument("--out", default=None, help="JSON report (default runs/judge/agreement_<data>.json)")
    agree.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs (0 = none)")
    agree.add_argument("--seed", type=int, default=0)
    agree.add_argument("--level", type=float, default=0.95, help="CI level")

    select = sub.add_parser("select", help="rank candidate judges by kappa on a labelled control set")
    select.add_argument("--control-set", required=True, help="CLEAR-Bias control_set directory (or its parent)")
    select.add_argument("--judges", required=True, help="YAML file with a 'judges:' list of specs")
    select.add_argument("--out", default="runs/judge-select", help="run directory for selection.json / winner.json")
    select.add_argument("--limit", type=int, default=None, help="use a seeded random subset of N rows")
    select.add_argument("--n-boot", type=int, default=1000)
    select.add_argument("--seed", type=int, default=0)
    _cache_flags(select)

    pair = sub.add_parser("pairwise", help="win rate of the model's answers against reference answers "
                                           "(both orders asked; see docs/evaluation.md)")
    pair.add_argument("--judge", required=True, help="llm:<model spec>[#pairwise], or a mapping with samples, "
                                                     "temperature, max_new_tokens, seed")
    pair.add_argument("--data", required=True, help=".csv/.jsonl/.parquet with a prompt, an answer and a reference")
    pair.add_argument("--out", required=True, help="output table (.csv/.jsonl/.parquet): input rows + verdicts; "
                                                   "the rates go to <out>.summary.json")
    pair.add_argument("--prompt-col", default=None, help="prompt column (default: 'prompt', any case)")
    pair.add_argument("--response-col", default=None, help="the model's answer (default: 'response', any case)")
    pair.add_argument("--reference-col", default=None,
                      help="the reference answer, e.g. the data set's chosen response (default: 'reference' or "
                           "'chosen', any case)")
    pair.add_argument("--prefix", default="pair_", help="prefix of the added columns (default pair_)")
    pair.add_argument("--limit", type=int, default=None, help="compare only the first N rows")
    pair.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the tie-aware CI (0 = none)")
    pair.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    pair.add_argument("--level", type=float, default=0.95, help="CI level")
    _cache_flags(pair)


def run(args) -> int:
    return {"run": _run, "agreement": _agreement, "select": _select, "pairwise": _pairwise}[args.judge_command](args)


def _run(args) -> int:
    import sys

    from robalign.evaluation.judges import judge_label, parse_judge_spec
    from robalign.evaluation.judging import judge_items, judge_table, verdict_counts
    from robalign.evaluation.options import open_cache, parse_options
    from robalign.evaluation.specs import redact_value
    from robalign.evaluation.stereotypes import stereotype_fields
    from robalign.evaluation.tables import STEREOTYPE_COLUMNS, find_column, read_table, write_table
    from robalign.provenance import run_record, write_json_atomic

    df = read_table(args.data)
    df = df.head(args.limit) if args.limit else df
    prompt_col = find_column(df, args.prompt_col, "prompt", "--prompt-col", args.data)
    response_col = find_column(df, args.response_col, "response", "--response-col", args.data)
    fields = stereotype_fields(df, args.data, prompt_col, parse_judge_spec(args.judge)["type"], args.stereotype_col,
                               args.counter_stereotype_col, args.base_prompts)
    if fields.base_prompts is not None:
        unmatched = len(df) - fields.matched
        print(f"joined {' / '.join(STEREOTYPE_COLUMNS)} from {fields.base_prompts} by prompt text: "
              f"{fields.matched} of {len(df)} rows matched"
              + (f"; the rule judge gives UNPARSED for the {unmatched} unmatched rows" if unmatched else ""))
    items = judge_items(fields.df, prompt_col, response_col, fields.stereotype, fields.counter)
    result = judge_table(fields.df, items, args.judge, open_cache(args.no_cache, args.cache),
                         parse_options(args.option), second_pass=args.second_pass, prefix=args.prefix)
    out = result.frame
    write_table(out, args.out)
    report = {"run": run_record(args, redact=redact_value), "judge": judge_label(args.judge), "rows": len(out),
              "base_prompts": fields.base_prompts, "verdicts": verdict_counts(out[f"{args.prefix}verdict"]),
              "generation": [s.to_dict() for s in result.summaries]}
    write_json_atomic(Path(str(args.out) + ".summary.json"), report)
    print(f"wrote {len(out)} rows to {args.out}; verdicts {report['verdicts']['counts']}")
    for s in result.summaries:
        print(s.line())
    if result.failed:
        print(f"{result.failed} judge calls FAILED (see {args.prefix}raw); run the same command again to retry "
              "only those rows", file=sys.stderr)
    return 1 if result.failed else 0


def _agreement(args) -> int:
    from robalign.evaluation.agreement_table import table_agreement
    from robalign.evaluation.specs import redact_value
    from robalign.evaluation.tables import read_table, require_columns
    from robalign.provenance import run_record, write_json_atomic

    df = read_table(args.data)
    preds = [c.strip() for c in args.pred.split(",") if c.strip()]
    require_columns(df, [args.gold, *preds], args.data, "--gold / --pred")
    result = table_agreement(df, args.gold, preds, n_boot=args.n_boot, seed=args.seed, level=args.level)
    payload = {"run": run_record(args, redact=redact_value), "data": str(args.data), **result.to_dict()}
    out = Path(args.out or Path("runs/judge") / f"agreement_{Path(args.data).name.split('.')[0]}.json")
    write_json_atomic(out, payload)
    _print_agreement(result.judges, args.level)
    if result.alpha_between_judges is not None:
        print(f"Krippendorff's alpha between the {len(preds)} judges (UNPARSED / FAILED / MISSING as missing "
              f"values): {result.alpha_between_judges:.3f}")
    print(f"wrote {out}")
    return 0


def _ci(report, metric: str) -> str:
    low, high = report.ci.get(metric, [float("nan")] * 2)
    return f"[{low:.3f}, {high:.3f}]"


def _p(p: float) -> str:
    return "<1e-300" if p == 0 else f"{p:.2g}"  # a double underflows below ~1e-308


def _print_agreement(reports, level: float) -> None:
    pct = f"{level:.0%}"
    print(f"{'judge':<22} {'n':>5}  {'accuracy ' + pct + ' CI':<26} {'kappa ' + pct + ' CI':<26} "
          f"{'SE':>6} {'z':>7} {'p':>9}  {'macro-F1 ' + pct + ' CI':<26} {'alpha':>6}  not-gold")
    for r in reports:
        k = r.kappa
        print(f"{r.name[:22]:<22} {r.n:>5}  {r.accuracy:.3f} {_ci(r, 'accuracy'):<20} {k.kappa:.3f} {_ci(r, 'kappa'):<20} "
              f"{k.se:>6.3f} {k.z:>7.2f} {_p(k.p):>9}  {r.macro_f1:.3f} {_ci(r, 'macro_f1'):<20} {r.alpha:>6.3f}  "
              f"{r.not_gold_label or '-'}")
    for r in reports:
        width = max(8, *(len(x) for x in r.labels)) + 1  # a space between "R" and "UNPARSED"
        print(f"\nconfusion ({r.name}): rows = gold, columns = judge")
        print(" " * width + "".join(f"{lab:>{width}}" for lab in r.labels))
        for lab, row in zip(r.labels, r.confusion):
            print(f"{lab:<{width}}" + "".join(f"{v:>{width}}" for v in row))


def _select(args) -> int:
    from robalign.evaluation.options import open_cache
    from robalign.evaluation.selection import load_judge_list, select_judge
    from robalign.evaluation.specs import redact_value
    from robalign.evaluation.tables import load_control_set
    from robalign.provenance import run_record, write_json_atomic

    judges = load_judge_list(args.judges)
    control = load_control_set(args.control_set)
    if args.limit:
        control = control.sample(n=min(args.limit, len(control)), random_state=args.seed).reset_index(drop=True)
    cache = open_cache(args.no_cache, args.cache)
    result = select_judge(control, judges, args.out, cache, n_boot=args.n_boot, seed=args.seed)
    write_json_atomic(Path(args.out) / "run.json", {"run": run_record(args, redact=redact_value),
                                                    "judges_file": str(args.judges),
                                                    "control_set": str(args.control_set), "rows": len(control)})
    print(f"{'rank':<5} {'judge':<40} {'kappa':>6}  {'95% CI':<18} {'accuracy':>8}  unparsed  failed")
    for i, entry in enumerate(result["ranking"], 1):
        a = entry["agreement"]
        low, high = a["ci"].get("kappa", [float("nan")] * 2)
        print(f"{i:<5} {entry['name'][:40]:<40} {a['kappa']['kappa']:>6.3f}  [{low:.3f}, {high:.3f}]   "
              f"{a['accuracy']:>8.3f}  {entry['verdicts']['unparsed']:>8}  {entry['verdicts']['failed']:>6}")
        if entry["generation"]:
            print(f"      {_summary_line(entry['generation'])}")
    for entry in result["skipped"]:
        print(f"{'-':<5} {entry['name'][:40]:<40} skipped: {entry['skipped']}")
    print(f"winner: {result['winner']['name']} -> {Path(args.out) / 'winner.json'}")
    return 0


def _summary_line(summary: dict) -> str:
    from robalign.evaluation.cache import RunSummary

    return RunSummary(**summary).line()


def _pairwise(args) -> int:
    import sys

    from robalign.evaluation.options import open_cache, parse_options
    from robalign.evaluation.pairwise import compare_table, pair_columns, pair_items, rates_line
    from robalign.evaluation.specs import redact_value
    from robalign.evaluation.tables import read_table, write_table
    from robalign.provenance import run_record, write_json_atomic

    df = read_table(args.data)
    df = df.head(args.limit) if args.limit else df
    columns = pair_columns(df, str(args.data), args.prompt_col, args.response_col, args.reference_col)
    result = compare_table(df, pair_items(df, *columns), args.judge, open_cache(args.no_cache, args.cache),
                           parse_options(args.option), prefix=args.prefix, level=args.level, n_boot=args.n_boot,
                           seed=args.seed)
    write_table(result.frame, args.out)
    report = {"run": run_record(args, redact=redact_value), "judge": result.judge,
              "template": result.template, "columns": dict(zip(("prompt", "response", "reference"), columns)),
              **result.stats, "not_judged": result.not_judged, "generation": result.summary.to_dict()}
    write_json_atomic(Path(str(args.out) + ".summary.json"), report)
    print(f"wrote {len(result.frame)} rows to {args.out}")
    print(rates_line(result.stats))
    print(result.summary.line())
    if result.not_judged:
        print(f"{result.not_judged} rows were not judged: their generation failed (status column)", file=sys.stderr)
    if result.failed:
        print(f"{result.failed} rows FAILED: a judge call failed (see {args.prefix}raw_model_a / _b); run the same "
              "command again to retry only those", file=sys.stderr)
    return 1 if result.failed else 0
