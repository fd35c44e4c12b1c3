"""Evaluation engine: generation backends, the response cache, judges and judge agreement.

| module            | what it holds                                                           |
|-------------------|-------------------------------------------------------------------------|
| backends          | request / response types, the Backend protocol, model spec strings      |
| specs             | the one YAML spec reader, refusal of secrets in specs, URL redaction    |
| labels            | every verdict and status label (FAILED, UNPARSED, S / CS / D / R, ...)   |
| hf_backend        | transformers, batched with left padding, greedy or per-row seeded sampling |
| openai_backend    | OpenAI-compatible HTTP: async, bounded concurrency, retries, cost        |
| vllm_backend      | vLLM offline engine (GPU extra, imported lazily)                          |
| cache             | SQLite (WAL) response cache and ``CachedBackend``; run summaries          |
| server            | local OpenAI-compatible server with fault injection (tests, offline runs) |
| templates/parsers | judge templates (our own words), delimiter neutralising, verdict parsers |
| rules             | keyword refusal detection and the CTO / SC option parser                 |
| judges            | judge protocol, rule / keyword / LLM judges, k-sample majority, specs    |
| agreement         | accuracy, Cohen's kappa (SE, z, p), macro-F1, Krippendorff's alpha, CIs  |
| tables            | CSV / JSONL / Parquet in and out, the CLEAR-Bias control-set loader      |
| workflows         | what ``robalign generate`` and ``robalign judge run`` do to a table      |
| selection         | ``robalign judge select``: rank judges by kappa on a control set         |

Nothing here imports ``robalign.training`` (DESIGN.md: the two never import each other).
Usage: docs/evaluation.md.
"""
