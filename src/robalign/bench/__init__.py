"""Benchmarks of a model under test: the CLEAR-Bias protocol and harmful-prompt attack success rate
(``robalign bench``).

| module      | what it holds                                                                  |
|-------------|--------------------------------------------------------------------------------|
| prompts     | bias prompt sets: CLEAR-Bias (HF id, CSV export), mapped tables, the embedded set |
| attacks     | the seven jailbreak attacks x three variants, as functions of a base prompt     |
| metrics     | robustness, fairness, safety, gate, post-attack safety, effectiveness, CIs       |
| contract    | a summary's metric names and values (the sweep store's, the Inspect tasks')      |
| report      | the self-contained CLEAR-Bias HTML report                                        |
| charts      | inline SVG charts for the reports (bars against tau, heatmap, rates)             |
| run         | the run directory: arguments fingerprint, resume, costs, outputs                 |
| judging     | the judges of a run: FAILED never judged, second pass, kappa and its source      |
| clearbias   | the CLEAR-Bias protocol loop                                                     |
| harmful_data| harmful-prompt sets: AdvBench, HarmBench, JBB, Do-Not-Answer, XSTest, any table  |
| harmful     | attack success rate, refusal and harmfulness apart, XSTest over-refusal          |
| harmful_report | the self-contained report of ``bench harmful``                                |

Nothing here imports ``robalign.training``.
"""
