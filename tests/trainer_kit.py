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


REPO = Path(__file__).resolve().parents[1]
TRAINER_SCRIPTS = REPO / "tests" / "trainers"


def trainer_python(name: str) -> Path:
    """The Python of a trainer's own virtual environment (``.venv-axolotl``, ``.venv-llamafactory``)."""
    import pytest

    python = REPO / f".venv-{name}" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run `bash scripts/{name}/setup.sh` (scripts/setup.sh runs it)")
    return python


def trainer_env(home: Path) -> dict[str, str]:
    """The environment for a trainer subprocess: offline, no telemetry, caches under ``home``, and none
    of datapipe's PYTHONPATH (the trainer's venv has its own packages)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "WANDB", "VIRTUAL_ENV"))}
    env.update(
        {
            "HF_HOME": str(home / "hf"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "AXOLOTL_DO_NOT_TRACK": "1",
            "WANDB_MODE": "disabled",
            "DISABLE_VERSION_CHECK": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def run_trainer(name: str, argv: list[str], home: Path, timeout: int = 600, cwd: Path | None = None) -> str:
    """Run ``argv`` (a script under tests/trainers/ or a console script of the venv) in a trainer's venv;
    returns stdout and stderr, and fails the test with both when it exits non-zero."""
    import subprocess

    import pytest

    python = trainer_python(name)
    if argv[0].endswith(".py"):
        cmd = [str(python), str(TRAINER_SCRIPTS / argv[0]), *argv[1:]]
    else:
        cmd = [str(python.parent / argv[0]), *argv[1:]]
    env = trainer_env(home)
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"  # as in an activated venv (launchers exec from it)
    proc = subprocess.run(cmd, env=env, cwd=cwd or home, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}")
    return out


def facts_from(out: str, tag: str) -> dict[str, Any]:
    """The JSON a tests/trainers/*_facts.py script printed after ``tag``."""
    import json

    line = next(ln for ln in out.splitlines() if ln.startswith(tag + " "))
    return json.loads(line[len(tag) + 1 :])


def smollm2_model(name: str, out: Path) -> Path:
    """A tiny random Llama with SmolLM2-135M-Instruct's tokenizer (read from the packaged GGUF), written by
    the trainer's own ``transformers`` (tests/trainers/make_tiny_model.py)."""
    from datapipe.teacher import default_gguf_path

    run_trainer(name, ["make_tiny_model.py", str(default_gguf_path()), str(out)], out.parent)
    return out
