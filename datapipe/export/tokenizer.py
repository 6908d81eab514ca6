"""The target model's tokenizer: its chat template, special tokens and token counts.

Every model family has its own chat template and EOS token (ChatML ``<|im_start|>``,
Llama 3 headers, Gemma turns, Mistral ``[INST]``), so the ``text`` format and the
token-length check use the tokenizer of the model being trained, given by path:

* a ``.gguf`` file: the template and special tokens embedded in it, read and counted by
  llama.cpp (``llama-cpp-python``, vocabulary only, no weights loaded);
* a local Hugging Face model folder: ``transformers.AutoTokenizer`` (offline).

Templates are rendered as ``transformers``' ``apply_chat_template`` renders them: a
sandboxed Jinja environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception``,
``strftime_now``, a ``tojson`` that does not escape HTML, the ``{% generation %}`` tag,
and the tokenizer's special tokens as variables, so a rendered text equals the one the
trainer would build from the same messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from datapipe.errors import ConfigError, MissingDependencyError

Messages = list[dict[str, str]]


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """A chat template compiled in the environment ``transformers`` uses for ``apply_chat_template``."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render_chat(template: str, messages: Messages, special_tokens: dict[str, str] | None = None) -> str:
    """``messages`` rendered with a chat template, as ``apply_chat_template(..., tokenize=False)`` does."""
    return compile_template(template).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=False, **(special_tokens or {})
    )


class ChatTokenizer:
    """A target model's chat template, special tokens and token counter."""

    kind = "base"

    def __init__(self, path: Path, chat_template: str | None, special_tokens: dict[str, str], fingerprint: str):
        self.path = path
        self.name = path.name
        self.chat_template = chat_template
        self.special_tokens = special_tokens
        self.eos_token = special_tokens.get("eos_token")
        self.fingerprint = fingerprint

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "eos_token": self.eos_token,
            "chat_template": bool(self.chat_template),
        }

    def render(self, messages: Messages) -> str:
        """One training string: the chat template's output, ending with the EOS token.

        The template's output is kept as is (so it equals ``apply_chat_template``); the EOS
        token is appended only where the template did not end the text with it.
        """
        if not self.chat_template:
            raise ConfigError(
                f"the tokenizer {self.path} has no chat template, so format text cannot render samples: "
                "point export.tokenizer (--tokenizer) at a model folder or GGUF file that has one"
            )
        text = render_chat(self.chat_template, messages, self.special_tokens)
        if self.eos_token and not text.rstrip().endswith(self.eos_token):
            text += self.eos_token
        return text

    def render_for_length(self, messages: Messages) -> str:
        """What the trainer tokenizes for these messages: the chat template's output, or, for a tokenizer
        without one, the message contents joined by newlines."""
        if self.chat_template:
            return self.render(messages)
        return "\n".join(m["content"] for m in messages)

    def count(self, texts: Sequence[str]) -> list[int]:
        raise NotImplementedError


class GGUFTokenizer(ChatTokenizer):
    """The vocabulary and chat template embedded in a GGUF file, through llama.cpp (no weights loaded)."""

    kind = "gguf"

    def __init__(self, path: Path) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependencyError(
                "llama-cpp-python (to read a GGUF tokenizer)", "pip install llama-cpp-python"
            ) from None
        try:
            with _quiet_stderr():
                self._llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=8, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(f"export.tokenizer: llama.cpp could not read {path} as a GGUF model: {exc}") from None
        meta = self._llama.metadata
        special = {}
        for name in ("bos", "eos", "unk", "pad"):
            token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
            if token_id is not None:
                special[f"{name}_token"] = self._token_text(int(token_id))
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        super().__init__(path, meta.get("tokenizer.chat_template"), special, tokenizer_fingerprint(path))

    def _token_text(self, token_id: int) -> str:
        return self._llama.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    def count(self, texts: Sequence[str]) -> list[int]:
        bos = self.special_tokens.get("bos_token", "")
        tokenize = self._llama.tokenize
        extra = [int(self._add_bos and not (bos and t.startswith(bos))) for t in texts]
        return [
            len(tokenize(t.encode("utf-8"), add_bos=False, special=True)) + e for t, e in zip(texts, extra, strict=True)
        ]


class HFTokenizer(ChatTokenizer):
    """A local Hugging Face model folder, through ``transformers.AutoTokenizer`` (offline)."""

    kind = "huggingface"

    def __init__(self, path: Path) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise MissingDependencyError(
                "transformers (to read a Hugging Face tokenizer)", "pip install transformers"
            ) from None
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"export.tokenizer: {path} is not a Hugging Face tokenizer folder "
                f"(tokenizer.json / tokenizer_config.json): {exc}"
            ) from None
        template = self._tok.chat_template
        if isinstance(template, dict):  # named templates: the default one
            template = template.get("default")
        special = {k: str(v) for k, v in self._tok.special_tokens_map.items() if isinstance(v, str)}
        super().__init__(path, template, special, tokenizer_fingerprint(path))

    def count(self, texts: Sequence[str]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(texts), 1024):
            ids = self._tok(list(texts[i : i + 1024]), add_special_tokens=False)["input_ids"]
            out.extend(len(x) for x in ids)
        return out


def tokenizer_fingerprint(path: Path) -> str:
    """Identifies a tokenizer's files (path, sizes, modification times) without loading them."""
    parts: list[Any] = [str(path.resolve())]
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
    for f in files:
        if f == path or not f.name.endswith((".safetensors", ".bin", ".onnx", ".pt", ".h5", ".msgpack")):
            st = f.stat()
            parts += [f.name, st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence llama.cpp's C-level notices while it opens a vocabulary (they are not errors)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def default_tokenizer_path() -> Path:
    """The embedded teacher's GGUF (SmolLM2-135M-Instruct): the tokenizer used when none is configured."""
    from datapipe.teacher import default_gguf_path

    return Path(default_gguf_path())


def resolve_tokenizer_path(path: str | Path | None) -> Path:
    p = Path(path).expanduser() if path else default_tokenizer_path()
    if not p.exists():
        raise ConfigError(
            f"export.tokenizer: {p} does not exist; give a local Hugging Face model folder "
            "(with tokenizer.json or tokenizer_config.json) or a .gguf file"
        )
    if p.is_file() and p.suffix.lower() != ".gguf":
        raise ConfigError(f"export.tokenizer: {p} is a file but not a .gguf; give a GGUF file or a model folder")
    return p


_LOADED: dict[str, ChatTokenizer] = {}


def load_tokenizer(path: str | Path | None = None) -> ChatTokenizer:
    """The tokenizer at ``path`` (a GGUF file or a Hugging Face folder; default: the embedded SmolLM2).

    Loaded once per process and file version: a GGUF vocabulary takes a fraction of a second,
    a ``transformers`` import a few seconds.
    """
    p = resolve_tokenizer_path(path)
    key = f"{p.resolve()}:{p.stat().st_mtime_ns}"
    if key not in _LOADED:
        _LOADED[key] = GGUFTokenizer(p) if p.is_file() else HFTokenizer(p)
    return _LOADED[key]
