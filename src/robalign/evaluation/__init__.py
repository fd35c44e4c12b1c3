"""Evaluation engine: generation backends, the response cache, judges and judge agreement.

| module            | what it holds                                                           |
|-------------------|-------------------------------------------------------------------------|
| backends          | request / response types, the Backend protocol, model spec strings      |
| hf_backend        | transformers, batched with left padding, greedy or per-row seeded sampling |
| openai_backend    | OpenAI-compatible HTTP: async, bounded concurrency, retries, cost        |
| vllm_backend      | vLLM offline engine (GPU extra, imported lazily)                          |
| cache             | SQLite (WAL) response cache and ``CachedBackend``; run summaries          |
| server            | local OpenAI-compatible server with fault injection (tests, offline runs) |
| specs             | the mapping-spec reader, refusal of secrets in specs, URL redaction     |
| labels            | every verdict and status label written into a table (UNPARSED, FAILED, ...) |
| templates/parsers | judge templates (our own words), delimiter neutralising, verdict parsers |
| rules             | keyword refusal detection and the CTO / SC option parser                 |
| judges            | judge protocol, rule / keyword / LLM judges, k-sample majority, specs    |
| families          | is the judge the model under test or of its family (name heuristics)     |
| agreement         | accuracy, Cohen's kappa (SE, z, p), macro-F1, Krippendorff's alpha, CIs  |
| agreement_table   | which cells of a table count: gold cleaning, alpha between judges        |
| tables            | CSV / TSV / JSONL / Parquet in and out (exact round trip), control set   |
| options           | ``-o KEY=VALUE`` backend options, the cache the flags select             |
| generation        | ``robalign generate``: requests per (row, sample), responses as rows     |
| judging           | ``robalign judge run``: verdict columns, the R-vs-M second pass          |
| stereotypes       | where the rule judge's stereotype fields come from (columns, base prompts) |
| selection         | ``robalign judge select``: rank judges by kappa on a control set         |
| pairwise          | ``robalign judge pairwise``: win rate vs a reference answer, both orders, Wilson / bootstrap CIs |

Run records (git commit, versions, arguments) and JSON writing: ``robalign.provenance``.

Nothing here imports ``robalign.training`` (DESIGN.md: the two never import each other).
Usage: docs/evaluation.md.
"""
