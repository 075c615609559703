"""One self-contained O1 Embedder folder from o1_jax parameters:

  * a Hugging Face `LlamaForCausalLM` (LoRA merged): safetensors, config.json, the tokenizer with the
    O1 special tokens `<query> </query> <thought> <emb>`, and a generation config for thinking
    (o1_jax.hf.causal_lm_view);
  * a sentence-transformers model over the same files that embeds documents like
    `O1Embedder.encode_corpus` (o1_jax.hf.sentence_transformers_view);
  * a model card, README.md (o1_jax.hf.model_card);
  * `o1_embedder.json`: the training lengths and the thinking settings, which
    `O1Embedder.from_pretrained` on the folder uses as its defaults (`read_settings`).

Both views' tokenizers are checked against o1_jax's `Formatter` while the folder is written, so a
tokenizer that would not reproduce the training formats stops it before the caller publishes it.
"""

from __future__ import annotations

import json
import pathlib

from o1_jax.data import formatting
from o1_jax.files import atomic_write_json
from o1_jax.hf import causal_lm_view, convert, model_card, sentence_transformers_view
from o1_jax.models import LlamaForCausalLM


SETTINGS = "o1_embedder.json"
SETTING_KEYS = ("max_query_tokens", "max_thought_tokens", "max_doc_tokens", "think_temperature", "think_top_p",
                "num_thoughts", "query_instruction")


def read_settings(folder: pathlib.Path) -> dict:
    """The export's `SETTINGS` ({} for a folder without them: a plain HF model, an older export)."""
    path = pathlib.Path(folder) / SETTINGS
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    unknown = sorted(set(settings) - set(SETTING_KEYS)) if isinstance(settings, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{path}: expected an object with keys from {SETTING_KEYS}, got {unknown or settings!r}")
    return settings


def write_o1_folder(folder: pathlib.Path, model: LlamaForCausalLM, params: dict, tokenizer, *,
                    max_query_tokens: int, max_thought_tokens: int, max_doc_tokens: int,
                    run: model_card.RunSummary, tokenizer_source: str, max_shard_size: int | str = "5GB",
                    think_temperature: float, think_top_p: float, num_thoughts: int,
                    query_instruction: str = "") -> None:
    """Writes the O1 folder into `folder`, an empty folder the caller publishes (e.g. o1_jax.files.staged_folder).

    The length limits are the training ones (`config.data`); `tokenizer` (the training tokenizer, with the
    O1 special tokens) is made the causal-LM one in place; `tokenizer_source` names it in errors.
    """
    formatter = formatting.Formatter(tokenizer, max_query_tokens, max_thought_tokens, max_doc_tokens)
    tokenizer = causal_lm_view.causal_lm_tokenizer(tokenizer)
    causal_lm_view.check_causal_lm_formats(tokenizer, formatter, source=tokenizer_source)
    max_seq_length = max_doc_tokens + 1  # the text, then <emb>

    convert.write_pretrained(model, params, folder, tokenizer=tokenizer, max_shard_size=max_shard_size)
    causal_lm_view.write_generation_config(folder, tokenizer, max_thought_tokens)
    sentence_transformers_view.write_sentence_transformers(folder, model.cfg.hidden_size, max_seq_length)
    sentence_transformers_view.check_sentence_transformers_tokenizer(folder, formatter, max_seq_length,
                                                                     source=tokenizer_source)
    atomic_write_json(folder / SETTINGS, dict(
        max_query_tokens=max_query_tokens, max_thought_tokens=max_thought_tokens, max_doc_tokens=max_doc_tokens,
        think_temperature=think_temperature, think_top_p=think_top_p, num_thoughts=num_thoughts,
        query_instruction=query_instruction))
    hf_config = json.loads((folder / "config.json").read_text())
    model_card.write_model_card(folder, run, model_card.ModelSummary(
        architecture=hf_config["architectures"][0], tied=bool(hf_config.get("tie_word_embeddings")),
        lora=bool(model.cfg.lora_rank), hidden_size=model.cfg.hidden_size,
        max_query_tokens=max_query_tokens, max_thought_tokens=max_thought_tokens, max_doc_tokens=max_doc_tokens,
        special_ids=formatter.special, eos_token=tokenizer.eos_token, eos_id=formatter.eos_id,
        pad_token=tokenizer.pad_token or tokenizer.eos_token, pad_id=formatter.pad_id,
    ))
