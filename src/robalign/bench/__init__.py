"""Benchmarks of a model under test: the CLEAR-Bias protocol and harmful-prompt attack success rate
(``robalign bench``).

| module      | what it holds                                                                  |
|-------------|--------------------------------------------------------------------------------|
| prompts     | bias prompt sets: CLEAR-Bias (HF id, CSV export), mapped tables, the embedded set |
| attacks     | the seven jailbreak attacks x three variants, as functions of a base prompt     |
| metrics     | robustness, fairness, safety, gate, post-attack safety, effectiveness, CIs       |
| report      | the self-contained HTML report                                                   |
| run         | the run directory: arguments fingerprint, resume, costs, outputs                 |
| clearbias   | the CLEAR-Bias protocol loop                                                     |
| harmful     | harmful-prompt sets, attack success rate, XSTest over-refusal                    |

Nothing here imports ``robalign.training``.
"""
