"""The files written next to the parquet: a dataset card and ready-to-use trainer snippets.

* ``README.md``: a Hugging Face dataset card. Its YAML header (configs with a data file per
  split, ``dataset_info`` features and split sizes, licence, task categories, tags) is built
  with ``datasets``' and ``huggingface_hub``'s own card helpers, so the hub and
  ``load_dataset(<folder>)`` read it as they read their own; the text says where the data
  came from (sources, teacher, prompts), what the filters dropped, and the token lengths.
* ``axolotl.yaml``: a whole Axolotl config: the ``datasets:`` block (plus ``test_datasets:`` for
  validation) and training settings (see :mod:`datapipe.export.trainers`).
* ``dataset_info.json`` and ``llamafactory.yaml``: LLaMA-Factory's dataset registry for this folder
  and a training config over it.
* ``trl_example.py``: ``load_splits()`` returns the export as TRL expects it; run as a script
  it trains with ``SFTTrainer`` (or ``DPOTrainer``).

Every snippet names the exact files and columns this export wrote (absolute paths).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from upath import UPath

from datapipe.export import trainers
from datapipe.export.formats import SHAREGPT_ROLE
from datapipe.export.options import ExportResult, RunFacts
from datapipe.fsio import write_bytes
from datapipe.store import RunStore

_CARD_STAGES = ("extract", "chunk", "generate", "filter", "preference")
_ROLE_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}
_ROLE_MAP = {"role": "role", "content": "content"}
_ASSISTANT_ONLY = {"roles_to_train": ["assistant"], "train_on_eos": "turn"}

AXOLOTL_TYPES: dict[str, dict[str, Any]] = {
    "chatml": {
        "type": "chat_template",
        "field_messages": "messages",
        "message_property_mappings": _ROLE_MAP,
        **_ASSISTANT_ONLY,
    },
    "sharegpt": {
        "type": "chat_template",
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles": {role: [tag] for role, tag in SHAREGPT_ROLE.items()},
        **_ASSISTANT_ONLY,
    },
    "alpaca": {"type": "alpaca"},
    "dpo": {
        "type": "chat_template.default",
        "field_messages": "prompt",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "message_property_mappings": _ROLE_MAP,
    },
    "text": {"type": "completion", "field": "text"},
}
"""The Axolotl dataset ``type`` and field mapping per format."""

LLAMAFACTORY_ENTRIES: dict[str, dict[str, Any]] = {
    "chatml": {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": _ROLE_TAGS},
    "sharegpt": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": SHAREGPT_ROLE["user"],
            "assistant_tag": SHAREGPT_ROLE["assistant"],
            "system_tag": SHAREGPT_ROLE["system"],
        },
    },
    "alpaca": {
        "formatting": "alpaca",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    },
    "dpo": {
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "prompt", "chosen": "chosen_turn", "rejected": "rejected_turn"},
        "tags": _ROLE_TAGS,
    },
    "text": {"formatting": "alpaca", "columns": {"prompt": "text"}},
}
"""The LLaMA-Factory ``dataset_info.json`` entry per format (``text`` is for ``stage: pt``)."""


def collect_run_facts(store: RunStore, run_id: str | None, sources: list[str]) -> RunFacts:
    """Sources, per-stage counts and rejects, and teachers of a run, from its manifests."""
    facts = RunFacts(run_id=run_id, sources=list(sources))
    for stage in _CARD_STAGES:
        m = store.read_manifest(stage)
        if m is None:
            continue
        c = m.get("counts", {})
        facts.stages.append(
            {
                "stage": stage,
                "in": c.get("in", 0),
                "out": c.get("out", 0),
                "rejected": c.get("rejected", 0),
                "rejects_by_reason": dict(m.get("rejects_by_reason", {})),
            }
        )
        for key in ("teacher", "second_model"):
            t = m.get(key)
            if isinstance(t, dict) and t.get("model"):
                step = f" ({t['step']})" if t.get("step") else ""
                facts.teachers.append(f"{stage}{step}: {t.get('backend')}:{t['model']}")
    return facts


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def card_title(result: ExportResult) -> str:
    run = result.facts.run_id if result.facts and result.facts.run_id else "export"
    return result.options.pretty_name or f"datapipe {run} ({result.fmt})"


def card_header(result: ExportResult, data_paths: dict[str, str] | None = None) -> str:
    """The card's YAML metadata, built by ``datasets``/``huggingface_hub`` as they do for ``push_to_hub``.

    ``data_paths`` (split -> path or glob) overrides the local file names, for the hub's layout.
    """
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    opts = result.options
    splits = SplitDict()
    for split, n in result.rows.items():
        splits.add(SplitInfo(name=split, num_examples=n))
    info = DatasetInfo(features=datasets.Features.from_arrow_schema(result.schema), splits=splits)
    kind = "dpo" if opts.fmt == "dpo" else "sft"
    card_data = DatasetCardData(
        license=opts.license,
        language=list(opts.language) or None,
        pretty_name=card_title(result),
        task_categories=["text-generation"],
        size_categories=[_size_category(result.n_out)],
        tags=["datapipe", "synthetic", kind, opts.fmt],
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    paths = data_paths or {split: path.name for split, path in result.files.items()}
    data_files = [{"split": split, "path": paths[split]} for split in result.files]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
    return card_data.to_yaml()


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


_FORMAT_TEXT = {
    "chatml": "`messages`: every turn as `{role, content}` (TRL SFTTrainer, Axolotl `chat_template`, "
    "LLaMA-Factory, Unsloth through TRL)",
    "sharegpt": "`conversations`: every turn as `{from: human|gpt|system, value}` (LLaMA-Factory, Axolotl)",
    "alpaca": "`instruction`, `input`, `output`, `system`, `history` (LLaMA-Factory alpaca, Axolotl `alpaca`)",
    "dpo": "`prompt`, `chosen`, `rejected` as `{role, content}` lists, `chosen_turn`/`rejected_turn` as single "
    "messages, `score_chosen`, `score_rejected` (TRL DPO/ORPO/SimPO, Axolotl `rl: dpo`, LLaMA-Factory ranking)",
    "text": "`text`: each sample rendered with the target model's chat template, EOS included",
}


def card_text(result: ExportResult, data_paths: dict[str, str] | None = None) -> str:
    """The whole README.md: YAML header, then what the data is, how it was made and how to load it."""
    opts = result.options
    facts = result.facts or RunFacts()
    rf = result.record_facts
    lines = ["---", card_header(result, data_paths).rstrip(), "---", ""]
    lines += [f"# {card_title(result)}", ""]
    run = f" from run `{facts.run_id}`" if facts.run_id else ""
    lines += [f"Training data made by datapipe{run}: format `{opts.fmt}`, {_FORMAT_TEXT[opts.fmt]}.", ""]
    lines += ["Every row has `id`, the datapipe record id, to trace it back to its source through the run store."]
    if opts.on_too_long == "flag" and opts.max_seq_len:
        lines += [f"`n_tokens` and `too_long` (over {opts.max_seq_len} tokens) flag rows; filter before training."]
    lines += ["", "## Files", ""]
    lines += _table(["split", "file", "rows"], [[s, f"`{p.name}`", result.rows[s]] for s, p in result.files.items()])
    if "validation" in result.empty_splits():
        lines += ["", f"No record fell into validation at split {opts.split}: validation.parquet was not written."]
    if opts.split < 1.0:
        split_rule = (
            f"Split: a record is in `train` when the first 8 bytes of SHA-256 of its id, read as a fraction of "
            f"2^64, are below {opts.split}; so re-exports never move a record between splits."
        )
    else:
        split_rule = "Split: every record is in `train` (export split 1.0)."
    lines += [
        "",
        split_rule,
        "",
        "Trainer configs beside this card: `axolotl.yaml` (Axolotl), `dataset_info.json` and "
        "`llamafactory.yaml` (LLaMA-Factory), `trl_example.py` (TRL). Train with (MODEL: a local folder or "
        "hub id of the model to train; its own chat template renders the chat formats):",
        "",
        "```bash",
        *trainers.commands(result).values(),
        "```",
        "",
        "## How it was made",
        "",
    ]
    if facts.sources:
        lines.append("- configured sources: " + ", ".join(f"`{s}`" for s in facts.sources))
    if rf.get("documents"):
        names = ", ".join(f"`{n}`" for n in rf["document_names"])
        rest = rf["documents"] - len(rf["document_names"])
        more = f" and {rest} more" if rest > 0 else ""
        lines.append(f"- {rf['documents']} source documents: {names}{more}")
    if rf.get("taxonomy_leaves"):
        lines.append(f"- {rf['taxonomy_leaves']} taxonomy leaves (InstructLab qna.yaml)")
    if rf.get("kinds"):
        lines.append("- sample kinds: " + ", ".join(f"{k}: {n}" for k, n in sorted(rf["kinds"].items())))
    teachers = facts.teachers or [f"{m}" for m in rf.get("teacher_models", [])]
    if teachers:
        lines.append("- teacher: " + "; ".join(teachers))
    if rf.get("prompts"):
        lines.append("- prompts: " + ", ".join(f"`{p}`" for p in rf["prompts"]))
    if rf.get("judges"):
        lines.append("- preference judge: " + ", ".join(rf["judges"]))
    if facts.stages or result.rejects:
        lines += ["", "## Filter statistics", ""]
        rows = [[s["stage"], s["in"], s["out"], s["rejected"]] for s in facts.stages]
        rows.append(["export", result.n_in, result.n_out, len(result.rejects)])
        lines += _table(["stage", "in", "out", "rejected"], rows)
        reasons = [[s["stage"], r, n] for s in facts.stages for r, n in sorted(s["rejects_by_reason"].items())]
        if result.rejects:
            reasons.append(["export", "too_long_for_max_seq_len", len(result.rejects)])
        if reasons:
            lines += ["", "Rejects by reason (each kept in the run store with its record and detail):", ""]
            lines += _table(["stage", "reason", "count"], reasons)
    if result.lengths:
        tok = result.tokenizer or {}
        ln = result.lengths
        lines += ["", "## Token lengths", ""]
        lines += [f"Counted with `{tok.get('name')}` ({tok.get('kind')}) on the text the trainer tokenizes:", ""]
        stats = ["min", "median", "p95", "max", "mean"]
        lines += _table(stats, [[ln[k] for k in stats]])
        if opts.max_seq_len:
            what = "dropped" if opts.on_too_long == "drop" else "flagged (`too_long`)"
            n = len(result.rejects) if opts.on_too_long == "drop" else result.flagged
            lines += ["", f"max_seq_len {opts.max_seq_len}: {n} records longer were {what}."]
    files = {s: str(p) for s, p in result.files.items()}
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("parquet", data_files={files!r})',
        "```",
        "",
    ]
    return "\n".join(lines)


def axolotl_config(result: ExportResult) -> dict[str, Any]:
    """Axolotl's ``datasets:`` (and ``test_datasets:``) entries for exactly these files and columns."""

    def entry(path: Path | UPath, test: bool) -> dict[str, Any]:
        e: dict[str, Any] = {"path": str(path), "ds_type": "parquet"}
        if test:
            e["split"] = "train"  # a single local file loads as split "train"
        return {**e, **copy.deepcopy(AXOLOTL_TYPES[result.fmt])}  # no shared objects: no YAML anchors

    cfg: dict[str, Any] = {"rl": "dpo"} if result.fmt == "dpo" else {}
    cfg["datasets"] = [entry(result.files["train"], False)]
    if "validation" in result.files:
        cfg["test_datasets"] = [entry(result.files["validation"], True)]
    return cfg


def llamafactory_info(result: ExportResult) -> dict[str, Any]:
    """Entries for LLaMA-Factory's ``data/dataset_info.json``: one per split (``eval_dataset`` for validation)."""
    out: dict[str, Any] = {}
    for split, path in result.files.items():
        name = f"datapipe_{result.fmt}" + ("" if split == "train" else f"_{split}")
        out[name] = {"file_name": str(path), **LLAMAFACTORY_ENTRIES[result.fmt]}
    return out


_TRL_LOAD = {
    "chatml": '    return ds.select_columns(["messages"])',
    "sharegpt": """    roles = {"human": "user", "gpt": "assistant", "system": "system"}

    def to_messages(row):
        return {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]}

    return ds.map(to_messages, remove_columns=ds["train"].column_names)""",
    "alpaca": """    def to_prompt_completion(row):
        prompt = [{"role": "system", "content": row["system"]}] if row["system"] else []
        for user, assistant in row["history"]:
            prompt += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        user = row["instruction"] + ("\\n" + row["input"] if row["input"] else "")
        prompt.append({"role": "user", "content": user})
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": row["output"]}]}

    return ds.map(to_prompt_completion, remove_columns=ds["train"].column_names)""",
    "dpo": '    return ds.select_columns(["prompt", "chosen", "rejected"])',
    "text": '    return ds.select_columns(["text"])',
}


def trl_example(result: ExportResult) -> str:
    """A runnable TRL script: ``load_splits()`` for these files, then one trainer over them."""
    files = {s: str(p) for s, p in result.files.items()}
    dpo = result.fmt == "dpo"
    trainer, config = ("DPOTrainer", "DPOConfig") if dpo else ("SFTTrainer", "SFTConfig")
    extra = ', dataset_text_field="text"' if result.fmt == "text" else ""
    tok = (result.tokenizer or {}).get("name", "the target model")
    model_note = (
        f"# format text was rendered with {tok}'s chat template: train the model that template belongs to"
        if result.fmt == "text"
        else "# any chat model: TRL renders the messages with its chat template"
    )
    flagged = ""
    if result.options.on_too_long == "flag" and result.options.max_seq_len:
        flagged = '    ds = ds.filter(lambda row: not row["too_long"])\n'
    return f'''"""Train on the datapipe export in this folder with TRL (format {result.fmt}).

Written by datapipe: the file names and columns below are exactly those of this export.
"""

from datasets import DatasetDict, load_dataset

DATA_FILES = {json.dumps(files, indent=4)}


def load_splits() -> DatasetDict:
    """The export's splits, with the columns TRL's {trainer} reads."""
    ds = load_dataset("parquet", data_files=DATA_FILES)
{flagged}{_TRL_LOAD[result.fmt]}


if __name__ == "__main__":
    from trl import {config}, {trainer}

    {model_note}
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    ds = load_splits()
    trainer = {trainer}(
        model=model,
        train_dataset=ds["train"],
        eval_dataset=ds["validation"] if "validation" in ds else None,
        args={config}(output_dir="out"{extra}),
    )
    trainer.train()
'''


def write_card_and_snippets(result: ExportResult) -> dict[str, Path | UPath]:
    """Write README.md and the trainer configs (axolotl.yaml, dataset_info.json, llamafactory.yaml,
    trl_example.py) into the export folder; returns their paths."""
    out = result.out_dir
    cmd = trainers.commands(result)
    header = f"# Axolotl config for this datapipe export (format {result.fmt}), read as it is:\n#   {cmd['axolotl']}\n"
    lf_header = f"# LLaMA-Factory config for this datapipe export (format {result.fmt}):\n#   {cmd['llamafactory']}\n"
    axolotl = trainers.axolotl_file(result, axolotl_config(result))
    texts = {
        "card": ("README.md", card_text(result)),
        "axolotl": ("axolotl.yaml", header + yaml.safe_dump(axolotl, sort_keys=False)),
        "llamafactory": (
            "dataset_info.json",
            json.dumps(llamafactory_info(result), indent=2, ensure_ascii=False) + "\n",
        ),
        "llamafactory_config": (
            "llamafactory.yaml",
            lf_header + yaml.safe_dump(trainers.llamafactory_file(result), sort_keys=False),
        ),
        "trl": ("trl_example.py", trl_example(result)),
    }
    paths = {}
    for key, (name, text) in texts.items():
        write_bytes(out / name, text.encode("utf-8"))
        paths[key] = out / name
    return paths
