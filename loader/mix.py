"""``mix``: draw batches from several readers by weight (the job of Petastorm's WeightedSamplingReader).

At step ``i`` the source is drawn with ``default_rng([seed, i, …])`` among the sources still running,
with probabilities proportional to their weights. The choice is a pure function of ``(seed, step,
which sources are exhausted)``, so the mixed stream is deterministic and its state is the step number,
the exhausted flags and the sources' own states (plus the batches drawn from each source, for the stats).

Stopping: ``stop="first"`` (default) ends the mix the first time a drawn source is exhausted, so the
proportions hold to the end; ``stop="all"`` drops exhausted sources, renormalises the remaining weights
and ends when every source is exhausted (every batch of every source comes out once). A source of
weight 0 is never drawn. At its end the mix closes the readers it opened (from URLs), as a reader closes
itself at its end, so none of their threads, worker processes or batches ahead stay behind; readers passed
in are the caller's and are left as they are (with ``stop="first"`` the others may still have batches to
give). ``state_dict`` and ``load_state_dict`` work after the end as before it: loading a state restarts
the sources where it says.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .arguments import check_int
from .convert_ragged import batch_rows
from .errors import ConfigError, StateError
from .reader import DEFAULT_MEMORY_BUDGET, Closeable, Reader, make_reader

MIX_KIND = "larder.mix"
_TAG_MIX = 0x6D78
STOP_RULES = ("first", "all")


def _count(value) -> bool:
    """A non-negative integer as JSON gives it back (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class MixedReader(Closeable):
    """An iterator of batches drawn from several readers; build it with :func:`mix`.

    Attributes:
        readers: The sources.
        weights: Their normalised weights.
        counts: Batches drawn from each source so far (carried by :meth:`state_dict`; a state saved before
            they were kept restarts them at zero).
    """

    def __init__(self, readers: Sequence[Reader], weights: Sequence[float], seed: int, stop: str,
                 with_source: bool, owned: Sequence[bool]):
        self.readers = list(readers)
        total = float(sum(weights))
        self.weights = [w / total for w in weights]
        self.seed, self.stop, self.with_source = seed, stop, with_source
        self._owned = list(owned)
        self._step = 0
        self._exhausted = [False] * len(self.readers)
        self.counts = [0] * len(self.readers)
        self._done = False

    def _draw(self) -> int | None:
        active = [i for i, done in enumerate(self._exhausted) if not done and self.weights[i] > 0]
        if not active:
            return None
        p = np.array([self.weights[i] for i in active])
        u = np.random.default_rng([self.seed, self._step, _TAG_MIX]).random()
        k = int(np.searchsorted(np.cumsum(p / p.sum()), u, side="right"))
        return active[min(k, len(active) - 1)]

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        while not self._done:
            i = self._draw()
            if i is None:
                break
            try:
                batch = next(self.readers[i])
            except StopIteration:
                self._exhausted[i] = True
                if self.stop == "first":
                    break
                continue  # the same step draws again among the remaining sources
            self._step += 1
            self.counts[i] += 1
            if self.with_source:
                batch["_source"] = np.full(batch_rows(batch), i, dtype=np.int32)
            return batch
        self._done = True
        self.close()  # as a reader at its end: the sources it opened stop (a state loaded later restarts them)
        raise StopIteration

    def state_dict(self) -> dict:
        """The step, the exhausted sources, the batches drawn from each, and every source's own state."""
        return {
            "kind": MIX_KIND,
            "seed": self.seed,
            "stop": self.stop,
            "weights": self.weights,
            "step": self._step,
            "exhausted": list(self._exhausted),
            "counts": list(self.counts),
            "done": self._done,
            "sources": [r.state_dict() for r in self.readers],
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume a mix from :meth:`state_dict`. The whole state, the sources' included, is checked before
        anything is loaded: a refused state leaves the mix and its sources where they were.

        Raises:
            StateError: Another kind of state, other seed/stop/weights or number of sources, a step, exhausted
                flags, counts or done flag of the wrong form (key named), or a source's state does not fit its
                reader.
        """
        step, exhausted, done, counts = self._check_state(state)
        for reader, sub in zip(self.readers, state["sources"], strict=True):
            reader.load_state_dict(sub)  # checked above: cannot fail
        self._step, self._exhausted, self._done, self.counts = step, exhausted, done, counts

    def _check_state(self, state) -> tuple[int, list[bool], bool, list[int]]:
        """``(step, exhausted, done, counts)`` of a state of this mix, its sources' states checked too;
        changes nothing.

        Raises:
            StateError: As :meth:`load_state_dict`.
        """
        if not isinstance(state, dict) or state.get("kind") != MIX_KIND:
            raise StateError(f"state key 'kind' must be {MIX_KIND!r}")
        for key, mine in (("seed", self.seed), ("stop", self.stop)):
            if state.get(key) != mine:
                raise StateError(f"state key {key!r} is {state.get(key)!r}, but this mix has {mine!r}")
        theirs = state.get("weights")
        if not isinstance(theirs, list) or len(theirs) != len(self.weights) or not all(
            math.isclose(a, b) for a, b in zip(theirs, self.weights, strict=True)
        ):
            raise StateError(f"state key 'weights' is {theirs!r}, but this mix has {self.weights!r}")
        n = len(self.readers)
        sources = state.get("sources")
        if not isinstance(sources, list) or len(sources) != n:
            raise StateError(f"state key 'sources' must list {n} reader states")
        for key in ("step", "exhausted"):
            if key not in state:
                raise StateError(f"state key {key!r} is missing")
        step = state.get("step")
        if not _count(step):
            raise StateError(f"state key 'step' must be a non-negative integer, got {step!r}")
        exhausted = state.get("exhausted")
        if not isinstance(exhausted, list) or len(exhausted) != n or not all(isinstance(x, bool) for x in exhausted):
            raise StateError(f"state key 'exhausted' must list {n} booleans (one per source), got {exhausted!r}")
        done = state.get("done", False)
        if not isinstance(done, bool):
            raise StateError(f"state key 'done' must be true or false, got {done!r}")
        counts = state.get("counts", [0] * n)  # absent from states saved before counts were kept
        if not isinstance(counts, list) or len(counts) != n or not all(map(_count, counts)):
            raise StateError(f"state key 'counts' must list {n} non-negative integers, got {counts!r}")
        for i, (reader, sub) in enumerate(zip(self.readers, sources, strict=True)):
            try:
                reader._check_state(sub)
            except StateError as e:
                raise StateError(f"state key 'sources[{i}]': {e}") from e
        return step, list(exhausted), done, list(counts)

    def print_stats(self, file=None) -> None:
        """Print each source's stats."""
        for i, r in enumerate(self.readers):
            print(f"# source {i} (weight {self.weights[i]:.3f}, {self.counts[i]} batches drawn)", file=file)
            r.print_stats(file=file)

    def close(self) -> None:
        """Close the readers this mix opened itself (from URLs); idempotent."""
        for r, owned in zip(self.readers, self._owned, strict=True):
            if owned:
                r.close()


def mix(sources: Sequence, weights: Sequence[float] | None = None, seed: int = 0, stop: str = "first",
        with_source: bool = False, **reader_options) -> MixedReader:
    """Draw batches from several readers (or dataset URLs) by weight.

    Args:
        sources: :class:`~loader.reader.Reader` objects, or URLs / datasets opened with
            ``make_reader(url, **reader_options)`` (those are closed with the mix, and when it ends; readers
            passed in are left open).
        weights: Relative weights (default: equal). Non-negative, not all zero.
        seed: Seed of the draws.
        stop: ``"first"`` or ``"all"`` (see the module docstring).
        with_source: Add ``_source`` (the source's index, ``int32``), one entry per row of each batch (rows
            counted by :func:`batch_rows`).
        **reader_options: Passed to :func:`~loader.reader.make_reader` for sources given as URLs; the
            source at index ``i`` is opened with ``seed + i`` (the mix's seed decides every shuffle, and one
            dataset given twice yields two different streams). For other seeds, pass readers.
            ``memory_budget`` (default 256 MiB) is the whole mix's: split evenly between the readers the mix
            opens (each of ``k`` URL sources gets ``memory_budget // k``), so the mix's memory does not grow
            with its number of sources. Readers passed in keep the budgets they were made with, on top of it.

    Raises:
        ConfigError: No sources, weights of the wrong length, negative, not finite or all zero, an unknown
            stop rule, or (with URL sources) a ``memory_budget`` that is not a positive integer.
    """
    sources = list(sources)
    if not sources:
        raise ConfigError("mix needs at least one source")
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise ConfigError(f"mix got {len(weights)} weights for {len(sources)} sources")
    bad = [i for i, w in enumerate(weights) if not math.isfinite(w) or w < 0]
    if bad or max(weights) <= 0:
        raise ConfigError(f"mix weights must be finite, non-negative and not all zero, got {weights}")
    weights = [w / max(weights) for w in weights]  # relative to the largest: the sum cannot overflow
    if stop not in STOP_RULES:
        raise ConfigError(f"stop must be one of {STOP_RULES}, got {stop!r}")
    check_int("seed", seed, 0)  # numpy integers too, as make_reader
    seed = int(seed)
    opened = sum(not isinstance(s, (Reader, MixedReader)) for s in sources)  # anything else is refused below
    if opened:
        budget = reader_options.get("memory_budget")
        check_int("memory_budget", budget, 1, allow_none=True)
        reader_options["memory_budget"] = max(1, int(budget or DEFAULT_MEMORY_BUDGET) // opened)
    readers, owned = [], []
    try:
        for i, s in enumerate(sources):
            if isinstance(s, (Reader, MixedReader)):
                readers.append(s)
                owned.append(False)
            elif isinstance(s, (str, os.PathLike)) or hasattr(s, "manifest"):
                readers.append(make_reader(s, seed=seed + i, **reader_options))
                owned.append(True)
            else:
                raise ConfigError(f"mix source {len(readers)} must be a reader or a URL, got {type(s).__name__}")
    except BaseException:
        for r, o in zip(readers, owned, strict=True):
            if o:
                r.close()
        raise
    return MixedReader(readers, weights, seed, stop, with_source, owned)


__all__ = ["MixedReader", "STOP_RULES", "batch_rows", "mix"]
