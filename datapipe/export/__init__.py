"""Export: kept samples (or preference pairs) -> training-ready parquet that trainers load as they are.

* ``chatml``: ``messages`` = [{role, content}] — TRL SFTTrainer (conversational),
  Axolotl ``type: chat_template``, Unsloth (through TRL).
* ``sharegpt``: ``conversations`` = [{from, value}] with human/gpt — LLaMA-Factory, Axolotl.
* ``alpaca``: ``instruction``/``input``/``output``/``system``/``history`` — LLaMA-Factory
  alpaca, Axolotl ``alpaca``.
* ``dpo``: ``prompt``/``chosen``/``rejected`` message lists — TRL DPOTrainer (also ORPO,
  SimPO), Axolotl ``rl: dpo``; ``chosen_turn``/``rejected_turn`` for LLaMA-Factory.
* ``text``: each sample rendered with the target model's chat template, EOS included.

Every row carries ``id``, the record id, to trace it back through the run store. Records
are split into ``train``/``validation`` by a stable hash of the id; the target tokenizer
counts tokens (records over ``max_seq_len`` are dropped to rejects or flagged); a dataset
card and trainer snippets are written next to the parquet files.
"""

from datapipe.export.card import collect_run_facts
from datapipe.export.formats import FORMATS, SCHEMAS, TRAINING_COLUMNS, pair_row, sample_row, to_row
from datapipe.export.hub import HubPushError, push_to_hub
from datapipe.export.options import ExportOptions, ExportResult, RunFacts, TokenCount
from datapipe.export.split import split_of, split_point
from datapipe.export.tokenizer import ChatTokenizer, load_tokenizer, render_chat, tokenizer_fingerprint
from datapipe.export.writer import TOO_LONG, export_pairs, export_records, export_samples, length_stats

__all__ = [
    "FORMATS",
    "SCHEMAS",
    "TOO_LONG",
    "TRAINING_COLUMNS",
    "ChatTokenizer",
    "ExportOptions",
    "ExportResult",
    "HubPushError",
    "RunFacts",
    "TokenCount",
    "collect_run_facts",
    "export_pairs",
    "export_records",
    "export_samples",
    "length_stats",
    "load_tokenizer",
    "pair_row",
    "push_to_hub",
    "render_chat",
    "sample_row",
    "split_of",
    "split_point",
    "to_row",
    "tokenizer_fingerprint",
]
