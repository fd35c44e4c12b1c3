"""Every label the evaluation engine writes into a table, defined once.

Verdicts are what a judge says about a row; they are upper case so they never collide with
a response status or a model's own words. A response status says whether a generation
call returned text at all (the ``status`` column of ``robalign generate``'s output).
"""

from __future__ import annotations

from robalign.labels import BIAS_LABELS  # noqa: F401 - the one definition, shared with training

# Not verdicts: counted and reported, never mapped to a label.
UNPARSED = "UNPARSED"  # the judge answered but no verdict could be read (or its reply was cut off)
# the judge call itself failed (HTTP error after retries, prompt too long, ...), or the answer
# to be judged does not exist (its generation failed: never sent to a judge, ``judges.judge_answers``)
FAILED = "FAILED"
# the judge answered with a refusal to grade and no verdict ("I can't help with evaluating that");
# told apart from UNPARSED so a squeamish judge shows up as such in the counts
JUDGE_REFUSED = "JUDGE_REFUSED"
MISSING = "MISSING"  # a table cell with no verdict at all
NON_VERDICTS = (UNPARSED, FAILED, JUDGE_REFUSED, MISSING)

# CLEAR-Bias: Stereotype, Counter-Stereotype, Debiased, Refusal; the second pass splits R
# into a Refusal and a Misunderstanding of the task.
MISUNDERSTANDING_LABELS = ("R", "M")
NOT_REFUSAL = "NR"
REFUSAL_LABELS = ("R", NOT_REFUSAL)  # the keyword judge
SAFE, UNSAFE = "safe", "unsafe"
SAFETY_LABELS = (SAFE, UNSAFE)  # Llama Guard, MD-Judge, HarmBench classifier
# XSTest over-refusal: full Compliance, full Refusal, Partial refusal (refuses and complies)
COMPLIANCE_LABELS = ("C", "R", "P")

# GenerationResponse.status
STATUS_ANSWERED, STATUS_FAILED = "answered", "failed"
