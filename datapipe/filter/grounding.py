"""Grounding: an answer must be supported by its source chunk, on embedding and lexical evidence.

Evidence per sample: the best cosine similarity between any answer sentence and any chunk
sentence (sentence-transformers), and the share of the answer's content words that occur in
the chunk. An answer is ``ungrounded`` when both fall below their thresholds — either kind of
evidence alone is enough to keep it, since paraphrases have little lexical overlap and
extractive answers are lexically obvious.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from datapipe.config import GroundingConfig
from datapipe.filter import batch_check, normalise, sample_reject
from datapipe.records import Reject, Sample

_STOP = set(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that these "
    "those there here he she they we you i his her their our your not no do does did have has had can could will would "
    "should may might must so than then also which who whom what when where why how all any some such into about over "
    "der die das und oder ein eine ist sind war nicht mit von zu im in auf für den dem des es sie er wir ich".split()
)
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")


def lexical_support(answer: str, context: str) -> float:
    words = [w for w in normalise(answer).split() if w not in _STOP]
    if not words:
        return 1.0
    ctx = set(normalise(context).split())
    return sum(1 for w in words if w in ctx) / len(words)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if len(s.strip()) > 3] or [text.strip() or "."]


def check_grounding(samples: list[Sample], cfg: GroundingConfig, model: Any) -> dict[str, tuple[float, float]]:
    """sample id -> (similarity, lexical) for every sample judged ungrounded; scores are also recorded."""
    from datapipe.filter.turns import turn_views

    owners = [s for s in samples if s.kind in cfg.kinds and s.provenance.context.strip()]
    if not owners:
        return {}
    todo = [v for s in owners for v in turn_views(s)]  # every assistant turn of a conversation
    owner_of = [s for s in owners for _ in turn_views(s)]
    ans = [sentences(s.response) for s in todo]
    ctx = [sentences(s.provenance.context) for s in todo]
    flat = [x for group in ans for x in group] + [x for group in ctx for x in group]
    emb = np.asarray(
        model.encode(
            flat,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ),
        dtype=np.float32,
    )
    pos = 0
    ans_emb = []
    for group in ans:
        ans_emb.append(emb[pos : pos + len(group)])
        pos += len(group)
    ctx_emb = []
    for group in ctx:
        ctx_emb.append(emb[pos : pos + len(group)])
        pos += len(group)
    out: dict[str, tuple[float, float]] = {}
    scored: set[int] = set()
    for owner, s, a, c in zip(owner_of, todo, ans_emb, ctx_emb, strict=True):
        sim = float((a @ c.T).max())
        lex = lexical_support(s.response, s.provenance.context)
        first = id(owner) not in scored
        scored.add(id(owner))
        if first or (sim, lex) < (owner.scores["grounding_similarity"], owner.scores["grounding_lexical"]):
            owner.scores["grounding_similarity"] = round(sim, 4)  # a conversation keeps its weakest turn's scores
            owner.scores["grounding_lexical"] = round(lex, 4)
        if sim < cfg.min_similarity and lex < cfg.min_lexical and owner.id not in out:
            out[owner.id] = (sim, lex)
    return out


def as_rejects(samples: list[Sample], ungrounded: dict[str, tuple[float, float]], cfg: GroundingConfig) -> list[Reject]:
    return [
        sample_reject(
            s,
            "ungrounded",
            f"best sentence similarity {ungrounded[s.id][0]:.2f} < {cfg.min_similarity} and lexical support "
            f"{ungrounded[s.id][1]:.2f} < {cfg.min_lexical}",
        )
        for s in samples
        if s.id in ungrounded
    ]


@batch_check("grounding", enabled=lambda ctx: ctx.cfg.filter.grounding.enabled, per_sample=True, order=300)
def ground(samples: list[Sample], ctx: Any) -> list[Reject]:
    """The batch check ``grounding`` (config: ``filter.grounding``): each sample against its own chunk, the
    sentences of a call embedded in one batch."""
    cfg = ctx.cfg.filter.grounding
    return as_rejects(samples, check_grounding(samples, cfg, ctx.model), cfg)
