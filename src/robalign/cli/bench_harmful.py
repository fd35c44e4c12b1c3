"""robalign bench harmful --dataset SET|PATH --model SPEC [--judge SPEC] --out RUN

  robalign bench harmful --dataset advbench --model hf:runs/tiny/nano --limit 20 --out runs/bench/adv_nano
  robalign bench harmful --dataset harmbench --model openai:my-model@http://127.0.0.1:8000/v1 \\
      --judge 'llm:openai:guard@http://127.0.0.1:8001/v1#llama-guard' --out runs/bench/hb_guard
  robalign bench harmful --dataset xstest --model hf:smollm2-135m-instruct --out runs/bench/xstest

Sets: advbench, harmbench (harmbench:test, harmbench:val), jbb, jbb:benign, donotanswer,
xstest, or a CSV / JSONL / Parquet file with a 'prompt' column. Writes RUN/responses.jsonl,
RUN/summary.json and RUN/report.html; a re-run with the same arguments makes no repeated
model or judge calls. ``--dry-run`` prints the calls, tokens and cost per phase and sends
nothing; ``--max-cost USD`` stops (resumably) before the spend would pass the cap.
Usage: docs/bench-harmful.md.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--dataset", required=True,
                   help="advbench | harmbench[:test|:val] | jbb | jbb:benign | donotanswer | xstest | PATH "
                        "(.csv/.jsonl/.parquet with a 'prompt' column; optional id, category, label safe|unsafe)")
    p.add_argument("--model", required=True, help="the model under test: hf:PATH | openai:MODEL@BASE_URL | vllm:PATH")
    p.add_argument("--judge", default="keyword",
                   help="safety judge: llm:<model spec>#llama-guard | #llama-guard-turns | #md-judge | #harmbench, "
                        "or keyword (default: a refusal proxy, ASR = non-refusal rate)")
    p.add_argument("--refusal-judge", default="keyword",
                   help="refusal judge: keyword (default, R / NR) or llm:<model spec>#compliance (C / R / P)")
    p.add_argument("--out", required=True, help="run directory (RUN/run.json, responses.jsonl, summary.json, report.html)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts of every category (a quick look)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit of the model under test")
    p.add_argument("--data-root", default=None,
                   help="folder of the shared sets (default $ROBALIGN_SHARED_DATA or ../shared/data)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option of the model under test, e.g. -o batch_size=16 (repeatable)")
    p.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option of the LLM judges, e.g. --judge-option concurrency=8 (repeatable)")
    p.add_argument("--cache", default=None, help="cache file (default $ROBALIGN_CACHE/generations.sqlite)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache (no resume)")
    p.add_argument("--restart", action="store_true",
                   help="start RUN over even if it was made with other arguments (cached answers are reused)")
    p.add_argument("--dry-run", action="store_true",
                   help="print calls, cached calls, tokens and cost per phase (from -o price_in / price_out); send nothing")
    p.add_argument("--max-cost", type=float, default=None, metavar="USD",
                   help="stop before the spend would pass USD (exit 2); the same command with a higher cap continues")


def run(args) -> int:
    from robalign.bench.harmful import HarmfulConfig, plan_harmful, run_harmful
    from robalign.evaluation.options import parse_options

    cfg = HarmfulConfig(
        dataset=args.dataset, model=args.model, out=args.out, judge=args.judge, refusal_judge=args.refusal_judge,
        limit=args.limit, max_new_tokens=args.max_new_tokens, options=parse_options(args.option),
        judge_options=parse_options(args.judge_option), data_root=args.data_root, cache=args.cache,
        no_cache=args.no_cache, restart=args.restart, max_cost=args.max_cost,
    )
    if args.dry_run:
        print_plan(plan_harmful(cfg))
        print("dry run: nothing was sent")
        return 0
    result = run_harmful(cfg)
    summary = result.summary
    for calls in summary["calls"].values():
        print(f"{calls['model']}: {calls['requests']} requests, {calls['cache_misses']} calls, "
              f"{calls['failed']} failed")
    for line in _rate_lines(summary):
        print(line)
    for note in summary["notes"]:
        print(f"note: {note}")
    costs = summary["costs"]
    print(f"cost: {costs['actual']['usd']:.4f} USD (estimated {costs['estimate']['total']['usd']:.4f})")
    print(f"wrote {result.run_dir}/responses.jsonl, summary.json and report.html")
    return 1 if result.failed else 0


def print_plan(plan: dict) -> None:
    print(f"{'phase':30} {'calls':>7} {'cached':>7} {'tokens in':>10} {'tokens out':>10} {'USD':>9}  by")
    for name, e in [*plan["phases"].items(), ("total", plan["total"])]:
        shown = name + (" (upper bound)" if e["upper_bound"] else "")
        print(f"{shown:30} {e['calls']:7d} {e['cached']:7d} {e['prompt_tokens']:10d} {e['completion_tokens']:10d} "
              f"{e['usd']:9.4f}  {e.get('by', '')}")


def _rate_lines(summary: dict) -> list[str]:
    def fmt(name: str, r: dict) -> str:
        if r["rate"] is None:
            return f"{name}: nothing judged"
        return f"{name}: {100 * r['rate']:.1f} % ({r['k']}/{r['n']}, 95 % CI {100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f})"

    lines = []
    if "harmful" in summary:
        h = summary["harmful"]
        asr_name = "attack success rate (keyword proxy)" if summary["judge"]["proxy"] else "attack success rate"
        lines += [fmt(asr_name, h["asr"]), fmt("refusal rate", h["refusal_rate"]),
                  f"refused and unsafe: {h['refused_and_unsafe']}"]
    if "over_refusal" in summary:
        lines.append(fmt("over-refusal on safe prompts", summary["over_refusal"]["over_refusal"]))
    if summary["generation_failed"]:
        lines.append(f"failed generations: {summary['generation_failed']} (not judged; a re-run retries them)")
    return lines
