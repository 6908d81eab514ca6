"""A small folder of documents that a scheduled run refreshes, and the config the refresh tests share.

Each document is one short chunk, so the teacher (SmolLM2 on the session's llama.cpp
server) answers a handful of requests per run. Filters that load the embedding model
are off: these tests are about what is regenerated, removed and published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TINY_TEACHER_FILTER, LlamaServer, write_config

DOCS = {
    "pumps.md": """# Pump maintenance

The circulation pump must be inspected every three months. Check the seals for leaks and replace them when
the rubber is cracked. The bearings are greased with lithium grease twice a year.

If the pump makes a grinding noise, stop it at once and call the maintenance team. Never open the pump
housing while the system is under pressure. The pressure gauge must read zero before any work starts.
""",
    "badges.md": """# Visitor badges

Every visitor receives a paper badge at the front desk. The badge shows the visitor's name, the host and the
date of the visit. Visitors must wear the badge where it can be seen at all times.

Badges are returned at the front desk when the visitor leaves. Lost badges are reported to security the same
day. A visitor without a badge is escorted back to the front desk.
""",
    "bikes.md": """# Bicycle parking

Staff may park bicycles in the covered shelter behind building C. The shelter is locked at night and opened
at six in the morning by the caretaker. Each bicycle needs a yellow sticker with the owner's staff number.

Bicycles without a sticker are removed after two weeks and kept in the storeroom for one month. Electric
bicycles are charged only at the marked sockets on the east wall of the shelter.
""",
    "canteen.md": """# Canteen

The staff canteen on the ground floor is open from half past eleven until two o'clock. Hot meals are paid
with the staff card; cash is not accepted. A vegetarian dish is offered every day, and a vegan dish on
Mondays and Thursdays.

Trays are returned to the rack by the exit. Food may not be taken into the laboratories or the server room.
""",
}
ADDED = (
    "fire.md",
    """# Fire drills

A fire drill is held twice a year in every building. When the alarm sounds, staff leave by the nearest exit
and gather at the assembly point in the car park. Fire wardens check that every room is empty and report to
the safety officer.

Nobody uses the lifts during a drill. The drill ends when the safety officer gives the all-clear signal.
""",
)
EDIT = """
## Spare parts

Spare seals and a spare impeller are kept in the blue cabinet of the workshop. The workshop manager orders
new parts when fewer than two seals are left, and records every part taken in the workshop logbook.
"""


def write_docs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def refresh_config(path: Path, server: LlamaServer, **sections: Any) -> Path:
    """pipeline.yaml over ``docs/`` beside it, teacher on the llama.cpp server."""
    base: dict[str, Any] = {
        "run_id": "refresh",
        "store": "runs",
        "sources": ["docs"],
        "teacher": {"backend": "openai", "model": server.model, "base_url": server.base_url, "max_concurrency": 2},
        # seed 4: SmolLM2 writes a parseable question for most of these documents (not every one: a
        # parse_error is a reject like any other); the tests pick the documents they change by their samples
        "generate": {
            "prompt_version": "v1",  # seed 4 was chosen for v1's question prompt
            "questions_per_chunk": 1,
            "question_params": {"max_new_tokens": 64, "temperature": 0.7, "seed": 4},
            "answer_params": {"max_new_tokens": 56, "temperature": 0.3, "seed": 1},
        },
        "filter": {
            **TINY_TEACHER_FILTER,
            "min_response_tokens": 0,
            "grounding": {"enabled": False},
            "near_dedup": {"enabled": False},
            "semantic_dedup": {"enabled": False},
        },
    }
    return write_config(path, **(base | sections))
