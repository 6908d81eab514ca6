"""``--push-to-hub``: the export uploaded with ``datasets``' own push, then its dataset card.

Nothing here runs in the tests' offline sandbox except the failure paths: offline mode,
no token, an unreachable hub. Each fails with what to configure; the token is never printed.
"""

from __future__ import annotations

import os

from datapipe.errors import TerminalError
from datapipe.export.card import card_text
from datapipe.export.options import ExportResult


class HubPushError(TerminalError):
    """The export could not be pushed to the Hugging Face hub; the message says what to configure."""


def _offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - datasets depends on it
        return False
    return bool(constants.HF_HUB_OFFLINE)


def push_to_hub(result: ExportResult, repo_id: str, private: bool = True) -> str:
    """Push the export's splits to the dataset repo ``repo_id`` and replace its card with ours; returns the URL.

    The data goes through ``DatasetDict.push_to_hub`` (hub layout ``data/<split>-*.parquet``),
    so the card pushed afterwards points its configs at those files.
    """
    where = f"pushing the export to the Hugging Face hub ({repo_id})"
    if _offline():
        raise HubPushError(
            f"{where}: offline mode is on (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}; datapipe "
            "sets it by default so that nothing is downloaded at run time). Run the command with HF_HUB_OFFLINE=0 "
            "and a write token in HF_TOKEN (or `hf auth login`)"
        )
    from huggingface_hub import DatasetCard, get_token

    token = get_token()
    if not token:
        raise HubPushError(
            f"{where}: no Hugging Face token found. Set HF_TOKEN to a token with write access, or run `hf auth login`"
        )
    try:
        import datasets

        dd = datasets.load_dataset("parquet", data_files={s: str(p) for s, p in result.files.items()})
        dd.push_to_hub(repo_id, private=private, token=token, commit_message="datapipe export")
        hub_paths = {split: f"data/{split}-*" for split in result.files}
        DatasetCard(card_text(result, data_paths=hub_paths)).push_to_hub(
            repo_id, token=token, repo_type="dataset", commit_message="datapipe dataset card"
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the upload is reported the same way
        message = str(exc).replace(token, "***")
        raise HubPushError(
            f"{where} failed: {type(exc).__name__}: {message[:500]}. Check that the hub "
            f"({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) is reachable and that the token in "
            f"HF_TOKEN may write to {repo_id}"
        ) from None
    return f"https://huggingface.co/datasets/{repo_id}"
