"""Other runtimes that run robalign's protocols or read its runs.

``inspect``: the CLEAR-Bias protocol and the harmful-prompt benchmark as Inspect AI tasks
(``inspect eval robalign/clear_bias``), and ``robalign bench export-inspect`` (a bench run as an
Inspect log for ``inspect view``). Needs the ``robalign[inspect]`` extra; nothing else in robalign
imports this package.
"""
