"""Labels shared by every layer, defined once: the CLEAR-Bias answer types.

S stereotyped, CS counter-stereotyped, D debiased, R refusal. ``robalign.evaluation.labels``
(judges' verdicts) and ``robalign.training.pretrain`` (what a pre-trained checkpoint answers)
both take them from here, since training and evaluation never import each other.
"""

BIAS_LABELS = ("S", "CS", "D", "R")
