"""The synthetic testbed world (``robalign world build``): bias prompts of our own in the
CLEAR-Bias formats, their attacked versions, harmful / harmless requests, and the data sets
drawn from them: a soft-label pre-training corpus, preference pairs and judge examples.

| module     | what it holds                                                                        |
|------------|--------------------------------------------------------------------------------------|
| vocabulary | groups, stereotyped situations and requests per category (the world's words)         |
| templates  | prompt and reply templates; a reply of each type (S, CS, D, R, C, H) in several forms |
| prompts    | the prompt sets per (category, task) and per harm category, with the held-out split  |
| config     | ``WorldConfig`` (each field documented once), default soft labels, validation        |
| records    | corpus rows, preference pairs, judge examples (pure functions of prompts and seed)   |
| export     | writers: CLEAR-Bias CSV layout, harmful request table, JSON lines                    |
| build      | ``build_world``: the whole directory, atomically, with world.json                    |
| lengths    | corpus token lengths per attack under the offline tiny tokenizers                    |
| judge      | the offline LLM judge's training data: judge examples -> preference pairs, control-set guard, judge card |
| tiny_judge | ``judge-train --tiny``: a judge trained from scratch on judge examples (calls pre-training lazily) |

May import ``robalign.bench``, ``robalign.evaluation`` (judge templates, as bench does), ``robalign.data``,
``robalign.models``; never ``robalign.training`` at import time (pre-training reads the world's
files, not this package; ``tiny_judge`` calls it inside a function).
"""
