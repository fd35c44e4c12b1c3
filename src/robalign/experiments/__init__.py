"""Experiments: sweeps of the whole loop, the results store, analysis and the report (docs/experiments.md).

| module | what it holds |
|--------|---------------|
| store  | the results store: sweeps, cell claims, metrics and judged samples in SQLite or PostgreSQL |

``training`` and ``evaluation`` never import this package; analysis and the report read only the store.
"""
