"""The world's three data sets, as lists of JSON-ready dicts: the pre-training corpus, the
preference pairs and the judge examples. Pure functions of the prompts, the config and the seed.

Every prompt draws from its own generator, seeded with ``"<seed>:<data set>:<prompt id>"``
(``random.Random`` hashes string seeds with SHA-512, so this is stable across runs and
Python processes), so changing one part of a config leaves the draws of the rest unchanged.

Corpus. A prompt with ``n`` draws gets ``n`` replies whose types follow its soft label
``p`` (the category's ``base`` distribution on a plain prompt, ``attacked`` on an attacked
one; harmful requests ``requests.soft_label``; harmless requests always H). ``systematic``
sampling puts the draws at ``u + k/n`` (k = 0 .. n-1, u uniform in [0, 1/n)) on the
cumulative distribution, so each type's count is ``floor`` or ``ceil`` of ``n * p`` and its
mean over prompts is exactly ``n * p`` (the model sees the soft label, not noise around it);
``iid`` draws each reply independently. The surface form of every reply is uniform.

Pairs (robalign's ``pairs`` format, read by ``robalign.data.preference.load_pairs``): on bias
prompts chosen D or R, rejected S or CS (each uniform); on harmful requests chosen R, rejected
C; on harmless requests (``pairs.harmless``) chosen H, rejected R. Hard labels: soft labels
come later, from a reward model trained on these pairs.

Judge examples: every plain prompt with ``judge.per_label`` replies of each of S / CS / D / R
in distinct surface forms (so the labels are balanced exactly), plus ``judge.attacked_per_prompt``
of its attacked versions with one reply per label; an attacked example keeps its plain prompt
in ``base_prompt``, as judges see attacked answers. Written from the world's own prompts only:
nothing here reads the CLEAR-Bias control set.
"""

from __future__ import annotations

import random
from typing import Any

from robalign.bench.prompts import AttackedPrompt
from robalign.world.config import WorldConfig
from robalign.world.prompts import WorldRequest
from robalign.world.templates import (
    BIAS_FORMS,
    BIAS_TYPES,
    REQUEST_FORMS,
    WorldPrompt,
    bias_reply,
    request_reply,
)

Row = dict[str, Any]


def draw_types(dist: dict[str, float], n: int, rng: random.Random, sampling: str) -> list[str]:
    """``n`` reply types drawn from ``dist`` (see the module doc), in random order."""
    types, weights = list(dist), [float(dist[t]) for t in dist]
    if sampling == "iid":
        return rng.choices(types, weights, k=n)
    u, drawn, cumulative, j = rng.random() / n, [], weights[0], 0
    for k in range(n):
        point = u + k / n
        while point >= cumulative and j < len(types) - 1:  # the last type takes any rounding remainder
            j += 1
            cumulative += weights[j]
        drawn.append(types[j])
    rng.shuffle(drawn)
    return drawn


def _messages(prompt: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def _bias_meta(p: WorldPrompt, attacked: AttackedPrompt | None) -> Row:
    return {"kind": "bias", "category": p.prompt.category, "task": p.prompt.task,
            "attack": attacked.attack if attacked else "", "variant": attacked.variant if attacked else ""}


def _request_meta(q: WorldRequest) -> Row:
    return {"kind": q.kind, "category": q.category, "task": "request", "attack": "", "variant": ""}


def corpus_rows(prompts: list[WorldPrompt], attacked: dict[str, list[AttackedPrompt]], requests: list[WorldRequest],
                soft_labels: dict[str, dict[str, dict[str, float]]], cfg: WorldConfig) -> list[Row]:
    """Pre-training rows in prompt order (the builder shuffles them); ``attacked``: base id -> its attacks."""
    seed, rows = cfg.seed, []
    for p in prompts:
        for a in [None, *attacked.get(p.prompt.id, [])]:
            pid = a.id if a else p.prompt.id
            rng = random.Random(f"{seed}:corpus:{pid}")
            dist = soft_labels[p.prompt.category]["attacked" if a else "base"]
            n = cfg.corpus.draws_attacked if a else cfg.corpus.draws_base
            for kind in draw_types(dist, n, rng, cfg.corpus.sampling):
                form = rng.randrange(BIAS_FORMS)
                rows.append({"prompt_id": pid, "messages": _messages(a.prompt if a else p.prompt.prompt,
                                                                     bias_reply(p, kind, form)),
                             **_bias_meta(p, a), "type": kind, "form": form, "heldout": p.heldout})
    for q in requests:
        rng = random.Random(f"{seed}:corpus:{q.id}")
        kinds = (draw_types(cfg.requests.soft_label, cfg.requests.draws, rng, cfg.corpus.sampling)
                 if q.kind == "harmful" else ["H"] * cfg.requests.draws)
        for kind in kinds:
            form = rng.randrange(len(REQUEST_FORMS[kind]))
            rows.append({"prompt_id": q.id, "messages": _messages(q.request.prompt, request_reply(q.request, kind, form)),
                         **_request_meta(q), "type": kind, "form": form, "heldout": q.heldout})
    return rows


def preference_pairs(prompts: list[WorldPrompt], attacked: dict[str, list[AttackedPrompt]],
                     requests: list[WorldRequest], cfg: WorldConfig) -> list[Row]:
    """Pairs in robalign's ``pairs`` format, each with ``meta`` (kind, category, task, attack,
    variant, chosen_type, rejected_type) and ``heldout``."""
    seed, rows = cfg.seed, []

    def pair(pid: str, k: int, prompt: str, chosen: tuple[str, str], rejected: tuple[str, str], meta: Row,
             heldout: bool) -> Row:
        return {"id": f"{pid}#{k}", "prompt": prompt, "chosen": chosen[1], "rejected": rejected[1],
                "meta": {**meta, "chosen_type": chosen[0], "rejected_type": rejected[0]}, "heldout": heldout}

    for p in prompts:
        for a in [None, *(attacked.get(p.prompt.id, []) if cfg.pairs.attacked else [])]:
            pid = a.id if a else p.prompt.id
            rng = random.Random(f"{seed}:pairs:{pid}")
            for k in range(cfg.pairs.per_prompt):
                good, bad = rng.choice(("D", "R")), rng.choice(("S", "CS"))
                chosen = (good, bias_reply(p, good, rng.randrange(BIAS_FORMS)))
                rejected = (bad, bias_reply(p, bad, rng.randrange(BIAS_FORMS)))
                rows.append(pair(pid, k, a.prompt if a else p.prompt.prompt, chosen, rejected, _bias_meta(p, a),
                                 p.heldout))
    for q in requests:
        if q.kind == "harmless" and not cfg.pairs.harmless:
            continue
        good, bad = ("R", "C") if q.kind == "harmful" else ("H", "R")
        rng = random.Random(f"{seed}:pairs:{q.id}")
        for k in range(cfg.pairs.per_prompt):
            chosen = (good, request_reply(q.request, good, rng.randrange(len(REQUEST_FORMS[good]))))
            rejected = (bad, request_reply(q.request, bad, rng.randrange(len(REQUEST_FORMS[bad]))))
            rows.append(pair(q.id, k, q.request.prompt, chosen, rejected, _request_meta(q), q.heldout))
    return rows


def judge_examples(prompts: list[WorldPrompt], attacked: dict[str, list[AttackedPrompt]], cfg: WorldConfig) -> list[Row]:
    """Judge-formatted examples: prompt, response, label, plus the fields a judge template or
    the rule judge reads (base_prompt, stereotype, counter_stereotype) and where it came from."""
    rows = []
    for p in prompts:
        rng = random.Random(f"{cfg.seed}:judge:{p.prompt.id}")
        plan = [(None, label, form) for label in BIAS_TYPES for form in rng.sample(range(BIAS_FORMS), cfg.judge.per_label)]
        for a in rng.sample(attacked.get(p.prompt.id, []), cfg.judge.attacked_per_prompt):
            plan += [(a, label, rng.randrange(BIAS_FORMS)) for label in BIAS_TYPES]
        for a, label, form in plan:
            rows.append({"id": f"{a.id if a else p.prompt.id}#{label}{form}",
                         "prompt": a.prompt if a else p.prompt.prompt, "response": bias_reply(p, label, form),
                         "label": label, "base_prompt": p.prompt.prompt if a else None,
                         "stereotype": p.prompt.stereotype, "counter_stereotype": p.prompt.counter_stereotype,
                         "category": p.prompt.category, "task": p.prompt.task,
                         "attack": f"{a.attack}:{a.variant}" if a else "", "heldout": p.heldout})
    return rows
