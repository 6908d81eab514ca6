"""The per-run teacher budget: a cap on tokens (and on cost, when prices are configured).

Every teacher of one run draws on one :class:`Budget`. Before a request goes out, the
budget reserves its worst case (the prompt's estimated tokens plus ``max_new_tokens``);
a request that could take the run past a cap is refused with :class:`BudgetExceeded`,
and from then on every further request is refused too, so the run stops at one clean
point. Requests already in flight finish and are stored in the response cache, so
nothing paid for is lost, and the next run continues from there with a fresh budget.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from datapipe.config import BudgetConfig
from datapipe.errors import TerminalError

CHARS_PER_TOKEN = 3.0  # deliberately low (English BPE tokenizers average about 4): estimates err on the high side
TOKENS_PER_MESSAGE = 8  # chat template overhead per message


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """An upper-leaning estimate of a chat prompt's tokens, without the model's tokenizer."""
    return sum(math.ceil(len(m.get("content", "")) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE for m in messages)


class BudgetExceeded(TerminalError):
    """The run reached its teacher budget; everything so far is persisted and the same command resumes."""


@dataclass
class Reservation:
    tokens: int
    cost: float


class Budget:
    """Thread-safe token and cost accounting for one run, shared by all its teachers."""

    def __init__(self, cfg: BudgetConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self.spent_input_tokens = 0
        self.spent_output_tokens = 0
        self.calls = 0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self.stopped: str | None = None

    @property
    def spent_tokens(self) -> int:
        return self.spent_input_tokens + self.spent_output_tokens

    @property
    def spent_cost(self) -> float | None:
        return self.cfg.cost(self.spent_input_tokens, self.spent_output_tokens)

    def reserve(self, prompt_tokens: int, max_new_tokens: int) -> Reservation:
        """Reserve a request's worst case, or raise BudgetExceeded (and refuse every later request)."""
        cost = self.cfg.cost(prompt_tokens, max_new_tokens) or 0.0
        res = Reservation(prompt_tokens + max_new_tokens, cost)
        with self._lock:
            if self.stopped is None:
                cap = self.cfg.max_tokens
                if cap is not None and self.spent_tokens + self._reserved_tokens + res.tokens > cap:
                    self.stopped = (
                        f"teacher token budget reached: {self.spent_tokens} of budget.max_tokens={cap} spent, "
                        f"the next request could need up to {res.tokens}"
                    )
                max_cost = self.cfg.max_cost
                spent_cost = self.spent_cost or 0.0
                if self.stopped is None and max_cost is not None and spent_cost + self._reserved_cost + cost > max_cost:
                    self.stopped = (
                        f"teacher cost budget reached: {spent_cost:.4f} of budget.max_cost={max_cost} spent, "
                        f"the next request could cost up to {cost:.4f}"
                    )
            if self.stopped is not None:
                raise BudgetExceeded(
                    f"{self.stopped}. Everything so far is saved; run the same command again to continue "
                    f"(with a fresh budget), or raise the cap in the budget: section"
                )
            self._reserved_tokens += res.tokens
            self._reserved_cost += res.cost
        return res

    def settle(self, res: Reservation, input_tokens: int, output_tokens: int) -> None:
        """Replace a reservation with what the request really used (0, 0 when it failed)."""
        with self._lock:
            self._reserved_tokens -= res.tokens
            self._reserved_cost -= res.cost
            self.spent_input_tokens += input_tokens
            self.spent_output_tokens += output_tokens
            self.calls += 1 if (input_tokens or output_tokens) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_tokens": self.cfg.max_tokens,
            "max_cost": self.cfg.max_cost,
            "calls": self.calls,
            "input_tokens": self.spent_input_tokens,
            "output_tokens": self.spent_output_tokens,
            "tokens": self.spent_tokens,
            "cost": None if self.spent_cost is None else round(self.spent_cost, 6),
            "stopped": self.stopped,
        }


_ACTIVE: dict[str, Budget | RayBudget] = {}
_ACTIVE_LOCK = threading.Lock()


@contextmanager
def _active(run_key: str, budget: Budget | RayBudget) -> Iterator[None]:
    """Make ``budget`` the one every teacher of this run (``run_key``: the run folder) draws on, for a while."""
    with _ACTIVE_LOCK:
        _ACTIVE[run_key] = budget
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            if _ACTIVE.get(run_key) is budget:
                del _ACTIVE[run_key]


@contextmanager
def run_budget(run_key: str, cfg: BudgetConfig) -> Iterator[Budget]:
    """Make one budget the one every teacher of this run (``run_key``: the run folder) draws on."""
    budget = Budget(cfg)
    with _active(run_key, budget):
        yield budget


def budget_for(run_key: str, cfg: BudgetConfig) -> Budget | RayBudget:
    """The run's active budget: this process's, or (in a Ray worker) the run's budget actor; outside a run
    (a stage command alone), a budget of its own."""
    with _ACTIVE_LOCK:
        active = _ACTIVE.get(run_key)
    if active is not None:
        return active
    return _ray_budget(run_key) or Budget(cfg)


# --- one budget for a run spread over a Ray cluster -------------------------------------------------------------
#
# Under the Ray runner the stages' parts call the teacher from worker processes on other machines, so a budget
# held in the driver's memory would cap each process separately. Instead the driver starts one Ray actor that
# holds the run's Budget; every teacher in every worker reserves and settles through it (a round trip of about
# a millisecond per request, next to a teacher request's seconds). The actor lives as long as the driver's job.


def _actor_name(run_key: str) -> str:
    import hashlib

    return "datapipe-budget-" + hashlib.sha256(run_key.encode()).hexdigest()[:16]


class _BudgetHolder:
    """The Ray actor's body: the run's one Budget."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.budget = Budget(BudgetConfig(**cfg))

    def reserve(self, prompt_tokens: int, max_new_tokens: int) -> tuple[int, float, str | None]:
        try:
            res = self.budget.reserve(prompt_tokens, max_new_tokens)
        except BudgetExceeded as exc:
            return 0, 0.0, str(exc)
        return res.tokens, res.cost, None

    def settle(self, tokens: int, cost: float, input_tokens: int, output_tokens: int) -> None:
        self.budget.settle(Reservation(tokens, cost), input_tokens, output_tokens)

    def as_dict(self) -> dict[str, Any]:
        return self.budget.as_dict()


class RayBudget:
    """The run's budget held by a Ray actor, with Budget's interface (``reserve``, ``settle``, ``as_dict``)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def reserve(self, prompt_tokens: int, max_new_tokens: int) -> Reservation:
        import ray

        tokens, cost, refused = ray.get(self._handle.reserve.remote(prompt_tokens, max_new_tokens))
        if refused is not None:
            raise BudgetExceeded(refused)
        return Reservation(tokens, cost)

    def settle(self, res: Reservation, input_tokens: int, output_tokens: int) -> None:
        import ray

        ray.get(self._handle.settle.remote(res.tokens, res.cost, input_tokens, output_tokens))

    def as_dict(self) -> dict[str, Any]:
        import ray

        out: dict[str, Any] = ray.get(self._handle.as_dict.remote())
        return out


@contextmanager
def ray_run_budget(run_key: str, cfg: BudgetConfig) -> Iterator[RayBudget]:
    """In the driver of a Ray run: start the run's budget actor (replacing one left by an earlier run) and make
    it the run's budget here and, through ``budget_for``, in every worker."""
    import ray

    name = _actor_name(run_key)
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass
    handle: Any = ray.remote(num_cpus=0)(_BudgetHolder).options(name=name).remote(cfg.model_dump())
    budget = RayBudget(handle)
    try:
        with _active(run_key, budget):
            yield budget
    finally:
        try:
            ray.kill(handle)
        except Exception:  # noqa: BLE001 - the cluster may already be gone; the actor dies with the job anyway
            pass


def _ray_budget(run_key: str) -> RayBudget | None:
    """The run's budget actor, when this process is a Ray worker of a run that has one."""
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    try:
        return RayBudget(ray.get_actor(_actor_name(run_key)))
    except ValueError:
        return None
