"""robalign: robust preference optimisation and adversarial bias evaluation for LLM safety research."""

__version__ = "0.1.0"
