"""Reader state: a small JSON-able dict from which a new reader resumes exactly.

Because the epoch plan is a pure function (:mod:`loader.plan`), a position is just ``(epoch, batch)``:
the next batch to yield. The state also records the dataset version and every setting that changes which
rows come in which batch (seed, batch size, shuffle, sample, ranks, window...), so loading a state into a
reader that would yield different batches fails with :class:`~loader.errors.StateError` naming the key,
instead of silently training on other data. Settings that do not change the batches (workers, pool kind,
prefetch) are free to differ, and so is the memory budget: a state planned with other windows (``window``,
``max_piece_rows``) is resumed with them (:meth:`loader.reader.Reader.load_state_dict`). A state also records
the rules the plan was made under (:data:`PLAN_RULES`): one made under other rules (an earlier larder's, which
cut and interleaved windows otherwise) is refused, since the same position would name other rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import StateError

STATE_KIND = "larder.reader"
STATE_FORMAT = 2
"""Format 2 records ``plan`` (:data:`PLAN_RULES`); format 1 (earlier larders) recorded no plan rules and is refused."""
PLAN_RULES = 2
"""The rules of :mod:`loader.plan` (and of the window permutation) a state was made under. Bump it whenever the
plan of the same settings changes (other windows, slices or row order), so that the states made under the old rules
are refused instead of resuming with other batches; ``tests/reader/test_state_audit_d.py`` pins the current plans.
Rules 1 are those of larders before format 2, which recorded none (they changed in b1af7ff, de2fefc, 2f9b1b2)."""


def make_state(*, dataset: str, version: str, config: Mapping[str, Any], epoch: int, batch: int) -> dict:
    """Build a reader state.

    Args:
        dataset: The dataset's name.
        version: The version read.
        config: Settings that decide the batches (JSON-able values).
        epoch: Epoch of the next batch.
        batch: Index in that epoch of the next batch.

    Returns:
        A dict that survives ``json.dumps`` / ``json.loads``.
    """
    state = {
        "kind": STATE_KIND,
        "format": STATE_FORMAT,
        "plan": PLAN_RULES,
        "dataset": dataset,
        "version": version,
        "epoch": int(epoch),
        "batch": int(batch),
        "config": dict(config),
    }
    return json.loads(json.dumps(state))  # normalise tuples to lists, fail early on non-JSON values


def check_state(state: Any, *, dataset: str, version: str, config: Mapping[str, Any]) -> tuple[int, int]:
    """Validate a state against a reader and return its position ``(epoch, batch)``.

    Raises:
        StateError: Not a reader state, made under other plan rules (an earlier larder's), or a key differs from
            this reader's (the key and both values are named).
    """
    if not isinstance(state, Mapping):
        raise StateError(f"a reader state must be a dict, got {type(state).__name__}")
    if state.get("kind") != STATE_KIND:
        raise StateError(f"state key 'kind' is {state.get('kind')!r}, expected {STATE_KIND!r}")
    if state.get("format") == 1 or (state.get("format") == STATE_FORMAT and state.get("plan") != PLAN_RULES):
        raise StateError(_other_rules(state))
    if state.get("format") != STATE_FORMAT:
        raise StateError(f"state key 'format' is {state.get('format')!r}, this larder reads {STATE_FORMAT}")
    for key, mine in (("dataset", dataset), ("version", version)):
        if state.get(key) != mine:
            raise StateError(f"state key {key!r} is {state.get(key)!r}, but this reader reads {mine!r}")
    theirs = state.get("config")
    if not isinstance(theirs, Mapping):
        raise StateError("state key 'config' is missing or not a dict")
    mine_cfg = json.loads(json.dumps(dict(config)))
    for key in sorted(set(mine_cfg) | set(theirs)):
        if key not in theirs:
            raise StateError(f"state key 'config.{key}' is missing (this reader has {mine_cfg[key]!r})")
        if key not in mine_cfg:
            raise StateError(f"state key 'config.{key}' is unknown to this reader")
        if theirs[key] != mine_cfg[key]:
            raise StateError(
                f"state key 'config.{key}' is {theirs[key]!r}, but this reader has {mine_cfg[key]!r}"
            )
    position = []
    for key in ("epoch", "batch"):
        value = state.get(key)
        if not is_state_int(value):
            raise StateError(f"state key {key!r} must be a non-negative integer, got {value!r}")
        position.append(value)
    return position[0], position[1]


def _other_rules(state: Mapping) -> str:
    """Why a state made under other plan rules than :data:`PLAN_RULES` is refused, and what to do instead."""
    if state.get("format") == 1:
        made = "state key 'format' is 1: the state was saved by an earlier larder, which recorded no plan rules"
    else:
        made = f"state key 'plan' is {state.get('plan')!r}: the state was made under plan rules {state.get('plan')!r}"
    epoch = state.get("epoch")
    again = f"set_epoch({epoch})" if is_state_int(epoch) else "set_epoch(epoch)"
    return (f"{made}, and this larder plans with rules {PLAN_RULES} (windows and slices cut or interleaved "
            "otherwise): resumed here, it would repeat some rows of its epoch and skip others. Resume it with the "
            f"larder that saved it, or read its epoch again from its first batch: {again} (on the reader, or on the "
            "torch dataset or loader)")


def is_state_int(value: Any, minimum: int = 0) -> bool:
    """Whether a state's ``value`` is an integer of at least ``minimum`` as JSON gives it back (not a bool, a float
    or a string): the rule of every integer of the reader's, the mix's and the adapters' states."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_layout(window: Any, max_piece_rows: Any) -> bool:
    """Whether a state's ``window`` / ``max_piece_rows`` are values a reader could have planned with."""
    return is_state_int(window, 1) and (max_piece_rows is None or is_state_int(max_piece_rows, 1))


__all__ = ["PLAN_RULES", "STATE_FORMAT", "STATE_KIND", "check_state", "is_layout", "is_state_int", "make_state"]
