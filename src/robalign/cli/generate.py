"""robalign generate --model SPEC --data FILE --out FILE [decoding options]

  robalign generate --model hf:runs/tiny/nano --data prompts.csv --prompt-col PROMPT --out runs/gen/nano.csv
  robalign generate --model openai:deepseek-chat@https://api.deepseek.com -o api_key_env=DEEPSEEK_API_KEY \\
      --data ../shared/data/clear_bias/base_prompts/base_prompts_SC.csv --out runs/gen/deepseek_sc.jsonl

Every call goes through the response cache: a re-run makes no new calls (see the summary's
hit / miss counts), and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="hf:PATH | openai:MODEL@BASE_URL | vllm:PATH | a YAML mapping")
    p.add_argument("--data", required=True, help="prompts table (.csv/.jsonl/.parquet)")
    p.add_argument("--out", required=True, help="output table: input rows x samples + response columns")
    p.add_argument("--prompt-col", default=None, help="prompt column (default: 'prompt', any case)")
    p.add_argument("--system", default=None, help="system message to prepend")
    p.add_argument("--samples", type=int, default=1, help="samples per prompt (needs --temperature > 0)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    p.add_argument("--cache", default=None, help="cache file (default $ROBALIGN_CACHE/generations.sqlite)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. -o batch_size=32 (hf), -o concurrency=16 (openai); repeatable")


def run(args) -> int:
    from robalign.evaluation.backends import build_backend, spec_label
    from robalign.evaluation.cache import CachedBackend
    from robalign.evaluation.generation import generate_frame, generation_requests
    from robalign.evaluation.options import open_cache, parse_options
    from robalign.evaluation.specs import redact_value
    from robalign.evaluation.tables import find_column, read_table, write_table
    from robalign.provenance import run_record, write_json_atomic

    df = read_table(args.data)
    df = df.head(args.limit).reset_index(drop=True) if args.limit else df.reset_index(drop=True)
    prompt_col = find_column(df, args.prompt_col, "prompt", "--prompt-col", args.data)
    requests = generation_requests(
        [str(p) for p in df[prompt_col]], args.system, args.samples, args.max_new_tokens, args.temperature,
        args.top_p, args.seed,
    )
    backend = CachedBackend(build_backend(args.model, **parse_options(args.option)),
                            open_cache(args.no_cache, args.cache), label=spec_label(args.model))
    out = generate_frame(df, backend, requests, args.samples)
    write_table(out, args.out)
    write_json_atomic(Path(str(args.out) + ".summary.json"), {"run": run_record(args, redact=redact_value),
                      "model": spec_label(args.model), "summary": backend.summary.to_dict()})
    print(backend.summary.line())
    print(f"wrote {len(out)} rows to {args.out}")
    return 0 if backend.summary.failed == 0 else 1
