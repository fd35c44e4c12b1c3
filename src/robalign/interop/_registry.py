"""Inspect AI's entry point (``[project.entry-points.inspect_ai] robalign``): importing the tasks
registers ``robalign/clear_bias`` and ``robalign/harmful``."""

from robalign.interop.inspect_tasks import clear_bias, harmful  # noqa: F401
