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
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from .arguments import check_int
from .convert import _STRUCTURE
from .convert_ragged import batch_rows
from .errors import ConfigError, StateError
from .reader import DEFAULT_MEMORY_BUDGET, Closeable, Reader, make_reader
from .state import is_state_int

MIX_KIND = "larder.mix"
_TAG_MIX = 0x6D78
STOP_RULES = ("first", "all")
SOURCE_COLUMN = "_source"
_SOURCE_KEYS = (SOURCE_COLUMN, *(SOURCE_COLUMN + suffix for suffix in _STRUCTURE))
"""Batch keys ``with_source`` would overwrite (``_source``) or that would be read as its ragged structure."""


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
            if self.with_source:
                clash = [key for key in _SOURCE_KEYS if key in batch]
                if clash:  # from a transform: the sources' selected columns were checked by mix()
                    raise ConfigError(f"mix source {i} gave a batch with the keys {clash}, which clash with the mix's "
                                      "source column '_source' (with_source=True); rename them in its transform or "
                                      "pass with_source=False")
                batch[SOURCE_COLUMN] = np.full(batch_rows(batch), i, dtype=np.int32)
            self._step += 1
            self.counts[i] += 1
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
        if not is_state_int(step):
            raise StateError(f"state key 'step' must be a non-negative integer, got {step!r}")
        exhausted = state.get("exhausted")
        if not isinstance(exhausted, list) or len(exhausted) != n or not all(isinstance(x, bool) for x in exhausted):
            raise StateError(f"state key 'exhausted' must list {n} booleans (one per source), got {exhausted!r}")
        done = state.get("done", False)
        if not isinstance(done, bool):
            raise StateError(f"state key 'done' must be true or false, got {done!r}")
        counts = state.get("counts", [0] * n)  # absent from states saved before counts were kept
        if not isinstance(counts, list) or len(counts) != n or not all(map(is_state_int, counts)):
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


def _check_sources(sources) -> list:
    """``sources`` as a list, refusing a single source given alone and anything that is not a list.

    Raises:
        ConfigError: Names ``sources`` and what it got.
    """
    kind = "sources must be a list of readers or URLs"
    if isinstance(sources, (str, bytes, os.PathLike, Reader, MixedReader)) or hasattr(sources, "manifest"):
        raise ConfigError(f"{kind}, got a single {type(sources).__name__} {sources!r}: wrap it in a list")
    if isinstance(sources, Mapping):
        raise ConfigError(f"{kind}, got a {type(sources).__name__} (give their weights as weights=)")
    try:
        return list(sources)
    except TypeError as e:
        raise ConfigError(f"{kind}, got {type(sources).__name__} {sources!r}") from e


def _check_weights(weights, n: int) -> list[float]:
    """The weights of ``n`` sources relative to the largest (all 1 for None).

    Raises:
        ConfigError: Not a sequence of ``n`` real numbers (bools refused), or negative, not finite or all zero.
    """
    if weights is None:
        return [1.0] * n
    kind = "weights must be a sequence of real numbers, one per source"
    if isinstance(weights, (str, bytes, Mapping)):
        raise ConfigError(f"{kind}, got {type(weights).__name__} {weights!r}")
    try:
        given = list(weights)
    except TypeError as e:
        raise ConfigError(f"{kind}, got {type(weights).__name__} {weights!r}") from e
    for w in given:
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise ConfigError(f"{kind}, got {type(w).__name__} {w!r} in {given!r}")
    if len(given) != n:
        raise ConfigError(f"mix got {len(given)} weights for {n} sources")
    bad = f"mix weights must be finite, non-negative and not all zero, got {given}"
    try:
        values = [float(w) for w in given]
    except OverflowError as e:  # an integer or fraction past the float range
        raise ConfigError(bad) from e
    if any(not math.isfinite(w) or w < 0 for w in values) or max(values) <= 0:
        raise ConfigError(bad)
    return [w / max(values) for w in values]  # relative to the largest: the sum cannot overflow


def _check_source_keys(i: int, source: Reader | MixedReader) -> None:
    """Refuse a source whose batches would hold ``_source`` (or a key read as its structure) next to the one
    ``with_source`` adds. A reader with a transform is checked at each batch instead: its transform decides
    its keys.

    Raises:
        ConfigError: Names the source and its clashing columns.
    """
    if isinstance(source, MixedReader):
        if source.with_source:
            raise ConfigError(f"mix source {i} is a mix with with_source=True: its column '_source' would clash "
                              "with this mix's (with_source=True); pass with_source=False to one of them")
        for reader in source.readers:
            _check_source_keys(i, reader)
        return
    clash = [c for c in source.columns if c in _SOURCE_KEYS]
    if clash and source.transform is None:
        raise ConfigError(f"mix source {i}: columns {clash} clash with the mix's source column '_source' "
                          "(with_source=True); select other columns (columns=) or pass with_source=False")


def mix(sources: Sequence, weights: Sequence[float] | None = None, seed: int = 0, stop: str = "first",
        with_source: bool = False, **reader_options) -> MixedReader:
    """Draw batches from several readers (or dataset URLs) by weight.

    Args:
        sources: A list of :class:`~loader.reader.Reader` objects, or URLs / datasets opened with
            ``make_reader(url, **reader_options)`` (those are closed with the mix, and when it ends; readers
            passed in are left open).
        weights: Relative weights, real numbers, one per source (default: equal). Non-negative, not all zero.
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
        ConfigError: ``sources`` not a list (a single source given alone) or empty, a source neither a reader nor
            a URL, ``weights`` not one real number per source, negative, not finite or all zero, an unknown stop
            rule, a seed that is not a non-negative integer, a ``with_source`` that is not a bool, reader
            options with no URL source to open, (with URL sources) a ``memory_budget`` that is not a positive
            integer, or, with ``with_source``, a source's columns holding ``_source`` (checked again on each
            batch of a source with a transform).
    """
    sources = _check_sources(sources)
    if not sources:
        raise ConfigError("mix needs at least one source")
    weights = _check_weights(weights, len(sources))
    if not isinstance(stop, str) or stop not in STOP_RULES:
        raise ConfigError(f"stop must be one of {STOP_RULES}, got {stop!r}")
    stop = str(stop)  # a plain str (not numpy's) for the state
    check_int("seed", seed, 0)  # numpy integers too, as make_reader
    seed = int(seed)
    if not isinstance(with_source, (bool, np.bool_)):
        raise ConfigError(f"with_source must be True or False, got {with_source!r}")
    with_source = bool(with_source)
    opened = sum(not isinstance(s, (Reader, MixedReader)) for s in sources)  # anything else is refused below
    if reader_options and not opened:
        raise ConfigError(f"mix got reader options {sorted(reader_options)}, but no source is a URL: they apply "
                          "only to the sources the mix opens (pass them to make_reader for the readers given)")
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
            if with_source:
                _check_source_keys(i, readers[-1])
    except BaseException:
        for r, o in zip(readers, owned, strict=True):
            if o:
                r.close()
        raise
    return MixedReader(readers, weights, seed, stop, with_source, owned)


__all__ = ["MixedReader", "STOP_RULES", "batch_rows", "mix"]
