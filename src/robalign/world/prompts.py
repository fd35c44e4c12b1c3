"""The world's prompt sets: bias prompts per (category, task) and harmful / harmless
requests, each with its place in the held-out split. Pure functions of (sizes, seed).

Bias prompts. A category's candidates are every (frame, trait) combined with every
(instruction, scene or sentence) template pair. They are taken round-robin: every
(frame, trait) once, in a seeded order, before any appears again with another template
pair, so ten prompts of a category cover all its 6-8 traits. The stereotyped option is first
in alternate prompts (the seeded order decides which half). Ids are those
``robalign.bench.prompts.load_prompt_set`` derives when it reads the exported CSVs
(``age/CTO/003``), so world files and bench runs name a prompt the same way.

Held-out split, by prompt: ``round(fraction * n)`` prompts of every (category, task) (at
least one when the fraction is above 0), drawn with the seed; an attacked prompt goes where
its base prompt goes. Requests: the same rule per harm category, harmful and harmless apart.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from robalign.bench.prompts import CATEGORIES, TASKS, BiasPrompt, prompt_id
from robalign.errors import UserError
from robalign.world.templates import (
    CTO_INSTRUCTIONS,
    CTO_SCENES,
    SC_INSTRUCTIONS,
    SC_SENTENCES,
    WorldPrompt,
    cto_prompt,
    sc_prompt,
)
from robalign.world.vocabulary import FRAMES, REQUESTS, Request

HARM_CATEGORIES = tuple(REQUESTS)


def capacity(category: str, task: str) -> int:
    """How many distinct prompts the templates give for (category, task)."""
    pairs = sum(len(f.traits) for f in FRAMES[category])
    templates = len(CTO_INSTRUCTIONS) * len(CTO_SCENES) if task == "CTO" else len(SC_INSTRUCTIONS) * len(SC_SENTENCES)
    return pairs * templates


def heldout_indices(n: int, fraction: float, rng: random.Random) -> set[int]:
    """Which of ``n`` items are held out (see the module doc)."""
    if fraction <= 0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(fraction * n)))  # one item always stays in training
    return set(rng.sample(range(n), k))


def bias_prompts(per_category: int, heldout_fraction: float, seed: int) -> list[WorldPrompt]:
    """``per_category`` prompts for every (category, task), CATEGORIES order, CTO before SC
    within a category (the CSV export writes CTO and SC files apart; ids number each task)."""
    out = []
    for category in CATEGORIES:
        for task in TASKS:
            if per_category > capacity(category, task):
                raise UserError(f"prompts.per_category={per_category}, but the templates give only "
                                f"{capacity(category, task)} distinct {task} prompts for {category}; lower it")
            rng = random.Random(f"{seed}:prompts:{category}:{task}")
            out += _category_prompts(category, task, per_category, rng)
            held = heldout_indices(per_category, heldout_fraction, rng)
            out[-per_category:] = [_held(p, p.prompt.index in held) for p in out[-per_category:]]
    return out


def _held(p: WorldPrompt, heldout: bool) -> WorldPrompt:
    return WorldPrompt(p.prompt, p.frame, p.trait, p.sentence, p.stereotype_letter, heldout)


def _category_prompts(category: str, task: str, n: int, rng: random.Random) -> list[WorldPrompt]:
    combos = [(frame, trait) for frame in FRAMES[category] for trait in frame.traits]
    rng.shuffle(combos)
    shape = (len(CTO_INSTRUCTIONS), len(CTO_SCENES)) if task == "CTO" else (len(SC_INSTRUCTIONS), len(SC_SENTENCES))
    templates = [rng.sample(list(itertools.product(*map(range, shape))), k=shape[0] * shape[1]) for _ in combos]
    first = rng.randrange(2)  # which half of the prompts puts the stereotype first
    prompts = []
    for i in range(n):
        (frame, trait), (instruction, body) = combos[i % len(combos)], templates[i % len(combos)][i // len(combos)]
        stereotype_first = (i + first) % 2 == 0
        if task == "CTO":
            text, stereo, counter = cto_prompt(frame, trait, instruction, body, stereotype_first, rng.random() < 0.5)
            sentence = ""
        else:
            text, stereo, counter, sentence = sc_prompt(frame, trait, instruction, body, stereotype_first)
        base = BiasPrompt(prompt_id(category, task, i), category, task, i, text, stereo, counter)
        prompts.append(WorldPrompt(base, frame, trait, sentence, "A" if stereotype_first else "B"))
    return prompts


@dataclass(frozen=True)
class WorldRequest:
    id: str  # "harmful/theft/000" | "harmless/theft/000"
    kind: str  # harmful | harmless
    category: str  # the harm category (a harmless request shares its harmful twin's topic)
    request: Request
    heldout: bool = False


def requests(per_category: int, heldout_fraction: float, seed: int) -> list[WorldRequest]:
    """The first ``per_category`` harmful and harmless requests of every harm category."""
    out = []
    for category, (harmful, harmless) in REQUESTS.items():
        for kind, pool in (("harmful", harmful), ("harmless", harmless)):
            if per_category > len(pool):
                raise UserError(f"requests.per_category={per_category}, but there are only {len(pool)} {kind} "
                                f"requests for {category}; lower it")
            held = heldout_indices(per_category, heldout_fraction, random.Random(f"{seed}:requests:{category}:{kind}"))
            out += [WorldRequest(f"{kind}/{category}/{i:03d}", kind, category, pool[i], i in held)
                    for i in range(per_category)]
    return out
