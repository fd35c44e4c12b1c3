"""Offline tiny models: a byte-level BPE tokenizer trained here and small randomly initialised
Llama / GPT-NeoX / GPT-2 models, saved in the ``save_pretrained`` layout.

Nothing is downloaded: the tokenizer corpus is CPython's own documentation text
(``pydoc_data.topics``, ~465k characters, ~8.8k distinct words) plus robalign's synthetic
safety texts, which together give BPE a varied enough vocabulary to reach 4096 merges
(a corpus of few distinct words stalls near 500).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

PAD, EOS, BOS = "<|pad|>", "<|end|>", "<|bos|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, EOS, BOS, *ROLE_TOKENS]

# One turn per message, each closed by <|end|>; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 4096
    context: int = 512


# Parameter counts with tied embeddings, Llama architecture: nano ~0.84M, micro ~9.1M, mini ~27M.
SIZES = {
    "nano": TinySize(hidden=96, layers=4, heads=4, intermediate=256),
    "micro": TinySize(hidden=288, layers=8, heads=8, intermediate=768),
    "mini": TinySize(hidden=512, layers=8, heads=8, intermediate=1376),
}
ARCHITECTURES = ("llama", "gpt_neox", "gpt2")


def tokenizer_corpus() -> list[str]:
    """Texts the offline tokenizer is trained on: stdlib docs plus robalign's synthetic world."""
    import pydoc_data.topics

    from robalign.data.synthetic import corpus_texts

    docs = list(pydoc_data.topics.topics.values())
    return docs + corpus_texts()


def build_tokenizer(vocab_size: int = 4096, texts: list[str] | None = None):
    """Train a byte-level BPE tokenizer offline and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts if texts is not None else tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    fast.model_max_length = SIZES["nano"].context
    return fast


def model_config(arch: str, size: str | TinySize, tokenizer):
    """A transformers config for a tiny model of ``arch`` (llama | gpt_neox | gpt2)."""
    s = SIZES[size] if isinstance(size, str) else size
    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=s.hidden,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=s.heads,
            intermediate_size=s.intermediate,
            max_position_embeddings=s.context,
            **common,
        )
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(
            hidden_size=s.hidden,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=s.intermediate,
            max_position_embeddings=s.context,
            **common,
        )
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            n_embd=s.hidden,
            n_layer=s.layers,
            n_head=s.heads,
            n_inner=s.intermediate,
            n_positions=s.context,
            **common,
        )
    raise ValueError(f"unknown tiny architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")


def build_tiny_model(
    out_dir: str | Path, size: str = "nano", arch: str = "llama", seed: int = 0, tokenizer=None
) -> Path:
    """Create tokenizer + randomly initialised model and ``save_pretrained`` both into ``out_dir``."""
    from transformers import AutoModelForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown tiny size '{size}'; choose one of {', '.join(SIZES)}")
    out = Path(out_dir)
    tokenizer = tokenizer or build_tokenizer(SIZES[size].vocab)
    config = model_config(arch, size, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    (tmp / "robalign_tiny.json").write_text(
        json.dumps({"size": size, "arch": arch, "seed": seed, "parameters": n_params}, indent=2)
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # a directory under its final name is always complete
    return out
