"""Scalar reward / cost heads, loaded only when the head really comes from the checkpoint.

Two checkpoint layouts are read:

| layout | weights | config | score read at |
|---|---|---|---|
| ``sequence_classification`` | backbone + ``score.*`` (transformers' ``*ForSequenceClassification``, one label) | model_type's own | last non-pad token (transformers) |
| ``safe_rlhf`` | ``<prefix>.*`` backbone + ``score_head.weight`` (+ ``.bias`` when ``config.bias``) | ``architectures: ["LlamaForScore"]`` (any ``*ForScore``), ``score_dim``, ``bias``, ``score_type``, ``do_normalize``, ``mean``, ``var`` | last attended token (safe-rlhf's ``end_scores``) |

``safe_rlhf`` is the layout of PKU-Alignment's score models (``beaver-7b-v1.0-reward`` /
``-cost``, the ShaPO paper's cost model). Loaded as a sequence classifier it would get a freshly
initialised ``score`` head and only a warning, so every soft label would be noise: a missing or
newly initialised head is an error here, for every layout, unless the caller is about to train
that head (``allow_new_head``, used by ``robalign train-reward``).

safe-rlhf scores the text ``"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"``
followed by the EOS token, tokenized in one piece with the tokenizer's own special tokens (BOS);
earlier turns of a conversation are ``USER: {u} ASSISTANT:{a}<eos>``. With ``do_normalize`` the
end score is normalised as safe-rlhf does: reward (x − mean)/(std + 1e-8), cost x/(std + 1e-8).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from robalign.data.formats import TRANSCRIPTS, render_transcript
from robalign.errors import UserError

log = logging.getLogger(__name__)

LAYOUTS = ("sequence_classification", "safe_rlhf")
NORM_EPS = 1e-8  # safe-rlhf's normaliser epsilon


def reward_layout(config) -> str:
    """``safe_rlhf`` when the config names a ``*ForScore`` architecture, else ``sequence_classification``."""
    archs = getattr(config, "architectures", None) or []
    return "safe_rlhf" if any(a.endswith("ForScore") for a in archs) else "sequence_classification"


class ScoreHeadModel:
    """Mixin body of the safe-rlhf layout; ``score_model_class`` builds the PreTrainedModel class.

    forward(input_ids (B, T), attention_mask (B, T)) -> ``.logits`` (B, 1): the score head applied
    to the final hidden state at the last position whose attention mask is 1.
    """

    def _build(self, config) -> None:
        from transformers import AutoModel

        setattr(self, self.base_model_prefix, AutoModel.from_config(config))
        self.score_head = nn.Linear(config.hidden_size, 1, bias=bool(getattr(config, "bias", False)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, E)
        width = attention_mask.shape[1]
        end = width - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)  # (B,) last 1 of each row
        end_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), end]  # (B, E)
        return SequenceClassifierOutput(logits=self._normalize(self.score_head(end_hidden).float()))

    def _normalize(self, scores: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not getattr(cfg, "do_normalize", False):
            return scores
        mean = torch.tensor(getattr(cfg, "mean", None) or [0.0], dtype=scores.dtype, device=scores.device)
        std = torch.tensor(getattr(cfg, "var", None) or [1.0], dtype=scores.dtype, device=scores.device).sqrt()
        kind = getattr(cfg, "score_type", "reward")
        if kind == "reward":
            return (scores - mean) / (std + NORM_EPS)
        return scores / (std + NORM_EPS) if kind == "cost" else scores  # critic: identity


@functools.lru_cache(maxsize=8)
def score_model_class(name: str, prefix: str):
    """A PreTrainedModel class named ``name`` (e.g. LlamaForScore, so save_pretrained keeps the
    architecture) whose backbone lives under ``prefix`` (the backbone's own base_model_prefix)."""
    from transformers import PretrainedConfig, PreTrainedModel

    def __init__(self, config):
        PreTrainedModel.__init__(self, config)
        self._build(config)
        self.post_init()

    attrs = {"__init__": __init__, "base_model_prefix": prefix, "config_class": PretrainedConfig,
             "_keys_to_ignore_on_load_unexpected": [r"^lm_head\.", r"^normalizer\."]}
    return type(name, (ScoreHeadModel, PreTrainedModel), attrs)


def _load_info_check(info: dict, source: str, head_prefix: str, allow_new_head: bool) -> None:
    """Raise a UserError when weights were newly initialised (``missing_keys``) or did not fit."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or [])
    if mismatched:
        raise UserError(f"reward model '{source}': weights {', '.join(mismatched[:4])} do not fit a one-output "
                        "reward head (a classifier with several labels?); give a model that outputs one score")
    head = [k for k in missing if k.startswith(head_prefix)]
    body = [k for k in missing if not k.startswith(head_prefix)]
    if body:
        raise UserError(f"reward model '{source}': {len(body)} backbone weights are missing from the checkpoint "
                        f"(e.g. {', '.join(body[:3])}) and would be random; the checkpoint is incomplete")
    if head and not allow_new_head:
        raise UserError(
            f"'{source}' has no trained reward head: {', '.join(head)} missing from its weights, so it would be "
            "randomly initialised and every score noise. Give a trained reward/cost model (a one-label "
            "*ForSequenceClassification with a `score` head, or a safe-rlhf *ForScore model with `score_head`), "
            "or train one first with `robalign train-reward --model <causal LM>`")
    if head:
        log.info("%s: new scalar head %s initialised (it is trained next)", source, ", ".join(head))


def load_head_model(source: str, dtype: torch.dtype, allow_new_head: bool = False):
    """(model, layout) for a resolved model path or hub id; the head must come from the weights
    unless ``allow_new_head``. ``model(input_ids, attention_mask).logits`` is (B, 1)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not read the config of reward model '{source}': {exc}") from None
    layout = reward_layout(config)
    try:
        if layout == "safe_rlhf":
            if getattr(config, "score_dim", 1) != 1:
                raise UserError(f"'{source}' is a safe-rlhf score model with score_dim={config.score_dim}; "
                                "robalign needs a single score (score_dim 1)")
            cls = score_model_class(config.architectures[0], _backbone_prefix(config))
            model, info = cls.from_pretrained(source, config=config, dtype=dtype, output_loading_info=True)
            head_prefix = "score_head."
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=1, dtype=dtype, output_loading_info=True)
            head_prefix = _seq_cls_head_prefix(model)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not load '{source}' as a one-output reward model: {exc}. Give a trained reward "
                        "model (or, for train-reward, a causal LM)") from None
    _load_info_check(info, source, head_prefix, allow_new_head)
    return model, layout


def _backbone_prefix(config) -> str:
    """The attribute (and weight-name prefix) a backbone of this model_type lives under in a
    model with a head: ``model`` for Llama / Mistral / OPT, ``transformer`` for GPT-2, ..."""
    from transformers import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)].base_model_prefix
    except KeyError:
        raise UserError(f"safe-rlhf score model of model_type '{config.model_type}': transformers has no "
                        "backbone class for it") from None


def _seq_cls_head_prefix(model) -> str:
    """Name prefix of the head tensors of a transformers sequence classifier (``score.``)."""
    prefix = model.base_model_prefix + "."
    heads = {n.split(".")[0] for n, _ in model.named_parameters() if not n.startswith(prefix)}
    return next(iter(heads)) + "." if len(heads) == 1 else "\0"  # "\0": every missing key counts as the body


def safe_rlhf_text(prompt: str | list[dict], response: str, eos_token: str, pair_id: str = "?") -> str:
    """``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}``; a conversation prompt
    alternates ``USER: {u} ASSISTANT:{a}<eos>`` turns and ends with a user turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise UserError(f"pair '{pair_id}': the safe-rlhf conversation format needs user/assistant turns that "
                        f"alternate and end with a user turn (no system turn); got roles {roles}")
    fmt = TRANSCRIPTS["safe_rlhf"]  # the one definition of the template (robalign.data.formats)
    return render_transcript(messages, fmt, eos_token) + fmt.response_prefix + response
