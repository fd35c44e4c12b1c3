"""Experiments: sweeps of the whole loop, the results store, analysis and the report (docs/experiments.md).

| module            | what it holds |
|-------------------|---------------|
| sweep             | sweep configs (``SweepConfig``), the grid and its cells, ``run_sweep`` |
| executors         | running cells here or as Ray tasks; the driver lock; recording a cell's result |
| store             | the results store: sweeps, cell claims, metrics and judged samples in SQLite or PostgreSQL |
| curves            | per-step series of a cell (training metrics, soft-label margins, probe epochs) beside the store |
| pipeline          | ``prepare`` (stages every cell shares) and ``run_cell`` (align, benchmark, metrics) |
| pipeline_world    | the world lane: world, pre-training checkpoints, the sweep's tiny LLM judge |
| pipeline_real     | the smollm2 lane: reward model and soft labels per noise mode and beta_r |
| pipeline_sft      | the optional SFT stage, trained once per base model, data and settings |
| pipeline_subspace | the probe + subspace stage: Top / Bottom / Random-K ShaPO masks |
| analysis          | correlations, slopes and paired comparisons with CIs and tests (scipy, statsmodels) |
| figures           | matplotlib figures of a sweep report |
| study_figures     | the ShaPO study's figures (4 to 7, ASR per method and judge) |
| report            | ``robalign report``: the self-contained HTML page and its headline |

``training`` and ``evaluation`` never import this package; analysis and the report read only the store.
"""
