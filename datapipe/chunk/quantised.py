"""The sentence embedder through ONNX Runtime with int8 weights (``chunk.backend: onnx-int8``) or through
OpenVINO (``chunk.backend: openvino``: bfloat16 on CPUs that have it, see :class:`OpenVINOEmbedder`).

sentence-transformers' own ``backend="onnx"`` (and its ``export_dynamic_quantized_onnx_model``) needs
Optimum's ONNX Runtime integration (``optimum-onnx``), whose releases require transformers < 4.58 while
this project pins transformers 5.x; so the same steps are done here with the libraries that are
installed: the model's transformer is exported with ``torch.onnx.export`` and its weights quantised to
int8 with ``onnxruntime.quantization.quantize_dynamic`` (dynamic quantisation: no calibration data;
per-channel weight scales of the MatMuls, like Optimum's avx512_vnni preset).
Mean pooling and L2 normalisation -- the model's ``Pooling``/``Normalize`` modules -- run in numpy.

The exported model is written once, on first use, under the datapipe cache
(``$DATAPIPE_CACHE``, else ``$XDG_CACHE_HOME/datapipe``, else ``~/.cache/datapipe``) in
``embedders/<model folder name>-<hash of the model's files>-onnx-int8/``; nothing is downloaded. A
changed model folder gets a new hash and thus a new export. The write goes to a temporary folder that
is renamed into place, so a killed export leaves no half model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from datapipe.errors import MissingDependencyError

ONNX_FILE = "model_int8.onnx"
FP32_FILE = "model_fp32.onnx"
_EXPORT_VERSION = 2  # bump when the export steps change, so old cached exports are not reused


def cache_root() -> Path:
    """Where datapipe keeps derived artefacts (exported embedders)."""
    if os.environ.get("DATAPIPE_CACHE"):
        return Path(os.environ["DATAPIPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "datapipe"


def model_hash(path: str) -> str:
    """A hash of a model folder's files (names and bytes), so the cache key changes with the model."""
    h = hashlib.sha256(f"export-v{_EXPORT_VERSION}".encode())
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def export_dir(path: str) -> Path:
    name = os.path.basename(os.path.normpath(path))
    return cache_root() / "embedders" / f"{name}-{model_hash(path)}-onnx-int8"


def _export(path: str, target: Path) -> None:
    """Export the transformer of the sentence-transformers model at ``path`` to ONNX, quantise its weights
    to int8, and write the result with the tokenizer and pooling settings into ``target``."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")
    transformer = st[0]
    pooling = st[1].get_config_dict() if len(st) > 1 else {}
    mean = pooling.get("pooling_mode") in ("mean", ["mean"]) or pooling.get("pooling_mode_mean_tokens", False)
    if pooling and not mean:
        raise MissingDependencyError(
            f"an ONNX export of {path!r} (only mean-pooling models are supported by chunk.backend=onnx-int8)",
            "set chunk.backend: torch",
        )
    normalize = any(type(m).__name__ == "Normalize" for m in st)
    base = transformer.auto_model.eval()

    class _Hidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = st.tokenizer(["an example sentence", "another one"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        fp32 = tmp / FP32_FILE
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Hidden(base),
                tuple(sample[n] for n in names),
                str(fp32),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        # per-channel int8 weights of the MatMuls only: per-tensor scales (or quantised embeddings) cost the
        # all-MiniLM-L6-v2 export ~0.95 mean cosine to the PyTorch model; this keeps it at ~0.99
        quantize_dynamic(
            str(fp32),
            str(tmp / ONNX_FILE),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
        st.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = {"max_seq_length": int(transformer.max_seq_length), "normalize": normalize, "source": path}
        (tmp / "datapipe_embedder.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same export first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class QuantisedEmbedder:
    """The subset of ``SentenceTransformer`` datapipe uses (``encode``, ``tokenizer``), on ONNX Runtime."""

    def __init__(self, path: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime (chunk.backend: onnx-int8)", "pip install onnxruntime") from None
        from transformers import AutoTokenizer

        folder = export_dir(path)
        if not (folder / ONNX_FILE).is_file() or not (folder / FP32_FILE).is_file():
            _export(path, folder)
        meta = json.loads((folder / "datapipe_embedder.json").read_text())
        self.path = str(folder)
        self.max_seq_length = int(meta["max_seq_length"])
        self.normalize = bool(meta["normalize"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        self._ort = ort
        self._exact: Any = None
        self._inputs = {"input_ids", "attention_mask", "token_type_ids"}  # the export's inputs
        self.session = self._fast_session(folder)

    def _fast_session(self, folder: Path) -> Any:
        """What ``encode`` runs: the int8 model on ONNX Runtime."""
        self.precision = "int8"  # weights; activations are quantised per batch
        return self._session(folder / ONNX_FILE)

    def _session(self, path: Path) -> Any:
        opts = self._ort.SessionOptions()
        opts.log_severity_level = 3
        # idle worker threads sleep instead of spinning: on a machine whose cores are shared (CI, a laptop running
        # other work) spinning made a 4-sentence document ~6x slower to embed (measured on the 2-core dev machine)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self._ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(
        self,
        sentences: list[str] | str,
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        show_progress_bar: bool = False,
        **_: Any,
    ) -> np.ndarray:
        """Embeddings of ``sentences`` (float32, one row each) from the int8 model."""
        return self._encode(self.session, sentences, batch_size, normalize_embeddings)

    def encode_exact(self, sentences: list[str], batch_size: int = 32) -> np.ndarray:
        """Normalised embeddings from the same export before quantisation (float32 weights: the PyTorch model's
        embeddings to about 1e-6). The chunker rescoring the few decisions int8 could flip uses it."""
        if self._exact is None:
            self._exact = self._session(Path(self.path) / FP32_FILE)
        return self._encode(self._exact, sentences, batch_size, True)

    def _encode(self, session: Any, sentences: list[str] | str, batch_size: int, normalize: bool) -> np.ndarray:
        """Batched by length as sentence-transformers does, so that a batch pads little."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        out = np.zeros((len(texts), 0), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start : start + batch_size]]
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
            )
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self._inputs}
            if "token_type_ids" in self._inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            hidden = session.run(None, feed)[0]
            mask = feed["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            if self.normalize or normalize:
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            rows.append(pooled.astype(np.float32))
        if rows:
            out = np.empty((len(texts), rows[0].shape[1]), dtype=np.float32)
            out[order] = np.concatenate(rows)
        return out[0] if single else out


class OpenVINOEmbedder(QuantisedEmbedder):
    """The same export's float32 model compiled by OpenVINO for this CPU (``chunk.backend: openvino``).

    OpenVINO picks the precision by itself: bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX), float32
    elsewhere. On the 2-core Xeon (with AMX) this project is developed on, bfloat16 encodes ~2.9x faster than the
    PyTorch model with a mean cosine of 0.99998 to it; forced to float32, OpenVINO is about as fast as PyTorch.
    The chunker rescores the few decisions whose scores were too close to call with :meth:`encode_exact` (ONNX
    Runtime, float32 weights), as for ``onnx-int8``.
    """

    def _fast_session(self, folder: Path) -> Any:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("openvino (chunk.backend: openvino)", "pip install openvino") from None
        core = ov.Core()
        # no pinning: threads pinned to cores that other processes (Ray workers, CI) also use wait on them.
        # A bounded cache of kernels per input shape: with the default (5,000 shapes) every new (batch, length)
        # kept its kernels, and RSS grew from 1.8 to 3.8 GB over 500 -> 3,000 documents; at 200 it stayed at
        # ~1.16 GB, 3 % slower (411 vs 400 s; /tmp/ovmem.py, see bench/README.md)
        self._compiled = core.compile_model(
            core.read_model(str(folder / FP32_FILE)),
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False, "CPU_RUNTIME_CACHE_CAPACITY": 200},
        )
        self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # bf16 or f32
        self._local = threading.local()
        return self  # ``_encode`` calls ``session.run``

    def run(self, _outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``onnxruntime.InferenceSession.run``'s shape; an infer request serves one thread at a time."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return [request.infer(feed)[0].copy()]
