"""What the trainer-acceptance tests share: a ChatML template, a tiny random GPT-2 with an offline
tokenizer, and TRL configs for one CPU training step. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ONE_STEP: dict[str, Any] = {
    "max_steps": 1,
    "report_to": [],
    "max_length": 256,
    "use_cpu": True,
    "save_strategy": "no",
    "logging_steps": 1,
}


def tiny_tokenizer() -> Any:
    """The packaged MiniLM tokenizer with a ChatML template and an EOS token."""
    from transformers import AutoTokenizer

    from datapipe.chunk import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    tok.chat_template = CHATML
    tok.eos_token = tok.sep_token
    return tok


def tiny_model_and_tokenizer() -> tuple[Any, Any]:
    """A one-layer randomly initialised GPT-2 sized to the tokenizer: enough for TRL to train a step."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=1, n_head=2)), tok


def sft_args(out: Path, **kw: Any) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out), per_device_train_batch_size=2, per_device_eval_batch_size=2, **{**_ONE_STEP, **kw}
    )


def dpo_args(out: Path, **kw: Any) -> Any:
    from trl import DPOConfig

    return DPOConfig(output_dir=str(out), **{**_ONE_STEP, "per_device_train_batch_size": 2, **kw})
