"""The epoch plan: which rows a rank reads, in which order, in which batches — decided before any I/O.

Everything here is a pure function of the row-group sizes and ``(seed, epoch, rank, world_size, sample,
batch_size, drop_last, window)``; randomness comes only from ``numpy.random.default_rng`` seeded with
lists that start with the user's seed, so seed 0 is an ordinary seed and nothing touches the global RNG.

An epoch is planned in five steps:

1. **Sample** (``sample < 1``): the epoch keeps ``round(sample × N)`` rows; how many come from each row
   group is drawn with a multivariate hypergeometric law, which rows with a per-group RNG
   (:func:`sample_rows`). Each epoch keeps a different subset; the plan never materialises row ids.
2. **Order**: row groups are permuted with the epoch's RNG (identity when ``shuffle=False``).
3. **Shard**: the kept rows, in that order, form one global sequence of ``M`` rows. Rank ``r`` gets the
   contiguous range ``[r·M//W + min(r, M%W), …)``: the first ``M % W`` ranks hold ``M//W + 1`` rows, the
   others ``M//W``. Shards are disjoint, cover the epoch, and work with fewer row groups than ranks.
4. **Batches**: every rank yields the same number of batches ``B``. With ``drop_last=False``,
   ``B = ceil((M//W) / batch_size)`` and every row comes exactly once: a rank holding the one extra row
   puts it in its last batch, which therefore has one row more than the other ranks' last batch (it may
   reach ``batch_size + 1`` rows when ``M//W`` is a multiple of ``batch_size``). With ``drop_last=True``,
   ``B = (M//W) // batch_size`` full batches; the rows a rank does not need are dropped after the shuffle,
   so different rows are dropped each epoch.
5. **Windows**: the rank's rows, as pieces ``(row group, start, stop)``, are grouped into the fewest
   windows of at most ``window`` pieces, of balanced sizes (211 pieces in windows of at most 10 are
   13 × 10 + 9 × 9, not 21 × 10 + 1: the epoch's last batches mix as many row groups as the others).
   Row groups too big for memory are cut into slices of ``max_piece_rows``; when shuffling, the slices
   of balanced runs of at most ``window`` consecutive row groups are interleaved, so a window holds one
   slice of each (each row group is still read front to back). A window's rows are permuted with
   ``default_rng([seed, epoch, rank, world_size, window_index, …])``; the rank's stream is the
   concatenation of its permuted windows, and batch ``b`` is a fixed row range of that stream. A batch
   therefore mixes up to ``window`` row groups, and resuming at batch ``b`` only needs the window that
   holds its first row.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.random  # noqa: F401 - numpy imports it lazily on first use (~15 ms), which would delay the first batch

# Distinct stream tags so the different random draws of one (seed, epoch) are independent.
_TAG_ORDER = 0x6F72
_TAG_SAMPLE = 0x736D
_TAG_ROWS = 0x7277
_TAG_WINDOW = 0x7769
_TAG_TRANSFORM = 0x7466
MIN_MIX = 8
"""Row groups a shuffled batch mixes at least (when the dataset has that many): the default window, the
number of row groups from which slices are interleaved ten at a time, and the reader's ``min_mix``."""
STREAMS = 10
"""Row groups streamed side by side when row groups are too big for a window: windows of 10 slices, over runs
of 8 or more row groups whenever there are 8 or more (28 row groups: 10 + 9 + 9; 14: one run of 14, not
7 + 7; see split_pieces), so every batch of a block-sized cache mixes 8 or more row groups. More streams cost
only their read buffers and pages (:func:`loader.sizes.stream_overhead`): the window's bytes are fixed and its
slices get shorter."""


class Piece(NamedTuple):
    """A contiguous run of one row group's (kept) rows.

    Attributes:
        group: Global row-group index (files in manifest order, row groups in file order).
        start: First position, counted in the group's kept rows (all rows when not sampling).
        stop: One past the last position.
    """

    group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Rows in the piece."""
        return self.stop - self.start


@dataclass(frozen=True)
class Window:
    """Pieces whose rows are shuffled together.

    Attributes:
        index: Position of the window in the rank's epoch.
        pieces: The pieces, in read order.
        first_row: Offset of the window's first row in the rank's stream.
    """

    index: int
    pieces: tuple[Piece, ...]
    first_row: int

    @property
    def rows(self) -> int:
        """Rows in the window."""
        return sum(p.rows for p in self.pieces)

    @property
    def stop_row(self) -> int:
        """Offset one past the window's last row in the rank's stream."""
        return self.first_row + self.rows


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch.

    Attributes:
        epoch: The epoch number.
        rank: This rank.
        world_size: Number of ranks.
        windows: The rank's windows, in order.
        batch_bounds: ``B + 1`` offsets into the rank's stream; batch ``b`` is rows
            ``[batch_bounds[b], batch_bounds[b + 1])``.
        kept: Rows kept from each row group this epoch (``None`` when not sampling).
    """

    epoch: int
    rank: int
    world_size: int
    windows: tuple[Window, ...]
    batch_bounds: tuple[int, ...]
    kept: tuple[int, ...] | None

    @property
    def num_batches(self) -> int:
        """Batches this rank yields in the epoch."""
        return len(self.batch_bounds) - 1

    @property
    def rows(self) -> int:
        """Rows this rank yields in the epoch (after ``drop_last``)."""
        return self.batch_bounds[-1]

    def window_of_row(self, row: int) -> int:
        """Index of the window that holds stream offset ``row``."""
        stops = [w.stop_row for w in self.windows]
        return int(np.searchsorted(stops, row, side="right"))


def group_order(num_groups: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's row-group order: a permutation of ``range(num_groups)`` (identity without shuffle)."""
    if not shuffle:
        return np.arange(num_groups, dtype=np.int64)
    return np.random.default_rng([seed, epoch, _TAG_ORDER]).permutation(num_groups).astype(np.int64)


def epoch_rows(total: int, fraction: float | None) -> int:
    """Rows an epoch keeps out of ``total`` with ``sample=fraction``: ``round(fraction × total)``."""
    return total if fraction is None or fraction >= 1 else int(round(fraction * total))


def sample_counts(sizes, fraction: float | None, seed: int, epoch: int) -> np.ndarray:
    """Rows kept from each row group: ``sizes`` itself, or a draw totalling :func:`epoch_rows`."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if fraction is None or fraction >= 1:
        return sizes
    total = epoch_rows(int(sizes.sum()), fraction)
    rng = np.random.default_rng([seed, epoch, _TAG_SAMPLE])
    return rng.multivariate_hypergeometric(sizes, total, method="marginals").astype(np.int64)


def sample_rows(size: int, kept: int, seed: int, epoch: int, group: int) -> np.ndarray:
    """Which rows of a row group of ``size`` rows are kept this epoch (sorted; all when ``kept == size``)."""
    if kept >= size:
        return np.arange(size, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, group, _TAG_ROWS])
    return np.sort(rng.choice(size, kept, replace=False)).astype(np.int64)


def shard_bounds(total: int, world_size: int) -> np.ndarray:
    """Offsets of the ``world_size`` contiguous shards of ``total`` rows (sizes differ by at most one)."""
    base, extra = divmod(total, world_size)
    ranks = np.arange(world_size + 1, dtype=np.int64)
    return ranks * base + np.minimum(ranks, extra)


def num_batches(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches every rank yields for an epoch of ``total`` rows (the same on every rank)."""
    smallest = total // world_size
    return smallest // batch_size if drop_last else -(-smallest // batch_size)


def batch_bounds(rows: int, batches: int, batch_size: int, drop_last: bool) -> tuple[int, ...]:
    """Row offsets of a rank's batches: full batches, the last one taking what is left (see module doc)."""
    if batches == 0:
        return (0,)
    bounds = [b * batch_size for b in range(batches)]
    bounds.append(batches * batch_size if drop_last else rows)
    return tuple(bounds)


def pieces_in_range(order: np.ndarray, counts: np.ndarray, lo: int, hi: int) -> list[Piece]:
    """Pieces covering rows ``[lo, hi)`` of the sequence of row groups ``order`` holding ``counts`` rows."""
    ordered = counts[order]
    ends = np.cumsum(ordered)
    starts = ends - ordered
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(starts, hi, side="left"))  # groups [first, last) overlap the range
    a = np.maximum(lo, starts[first:last]) - starts[first:last]
    b = np.minimum(hi, ends[first:last]) - starts[first:last]
    keep = b > a
    return [Piece(*t) for t in zip(order[first:last][keep].tolist(), a[keep].tolist(), b[keep].tolist(), strict=True)]


def balanced_bounds(n: int, most: int, least: int = 1) -> list[int]:
    """Cut ``n`` items into the fewest consecutive runs of at most ``most`` items, of sizes differing by at
    most one (larger runs first); returns the ``k + 1`` run bounds. 21 items in runs of at most 10 are
    7 + 7 + 7, not 10 + 10 + 1: no run is left with a handful of items. With ``least``, runs hold at least
    that many items whenever ``n`` does, even if that takes runs longer than ``most``: 14 items with
    ``most=10, least=8`` are one run of 14 (7 + 7 would fall short), 23 items 12 + 11."""
    runs = max(1, math.ceil(n / max(1, most)))
    if runs > 1 and n // runs < least:
        runs = max(1, n // least)
    small, extra = divmod(n, runs)
    return [i * small + min(i, extra) for i in range(runs + 1)]


def split_pieces(pieces: list[Piece], max_rows: int | None, interleave: int = 1) -> list[Piece]:
    """Cut pieces longer than ``max_rows`` into slices of at most ``max_rows`` rows.

    With ``interleave > 1``, the pieces are grouped into balanced runs of about ``interleave`` (at most
    ``interleave``, unless that would leave a run under four fifths of it; see :func:`balanced_bounds`) and
    the slices of each run are dealt round-robin (slice 0 of each, then slice 1 of each...), so a window of
    ``interleave`` consecutive slices mixes at least four fifths as many row groups (8 of 10), the dataset's
    last run too, and each row group is still read front to back.
    """
    if not max_rows:
        return list(pieces)
    if interleave <= 1:
        return [Piece(p.group, a, min(p.stop, a + max_rows)) for p in pieces for a in range(p.start, p.stop, max_rows)]
    out = []
    least_rounds = math.ceil(4 * interleave / max(1, len(pieces)))
    bounds = balanced_bounds(len(pieces), interleave, least=interleave - interleave // 5)
    for i, j in itertools.pairwise(bounds):
        run = pieces[i:j]
        # Every piece of a run is cut into the same number of near-equal slices (as many as its longest
        # piece needs), so each round deals a share of every row group: no round of a few-row remnants
        # (235 rows in slices of 116 from the front left 3-row tails), and shorter pieces (a shard's
        # boundary) last every round too. A slice never exceeds ``max_rows``.
        # At least 4 * interleave pieces in all (40 for 10): the windows of at most ``interleave`` pieces,
        # balanced by make_windows, then hold 8 or more pieces each (22 pieces in windows of at most 10
        # would be 8 + 7 + 7); any 8 consecutive pieces of a run of 8 or more are 8 row groups.
        # Slices of one piece are all ``ceil(rows / k)`` long but the last, so a row group's stream decodes
        # exactly one slice at a time (a decoded chunk that straddled two slices would stay in memory).
        k = max(max(math.ceil(p.rows / max_rows) for p in run), least_rounds)
        cuts = [list(range(p.start, p.stop, max(1, math.ceil(p.rows / k)))) + [p.stop] for p in run]
        for r in range(k):
            out.extend(Piece(p.group, c[r], c[r + 1]) for p, c in zip(run, cuts, strict=True) if r + 1 < len(c))
    return out


def make_windows(pieces: list[Piece], window: int) -> tuple[Window, ...]:
    """Group pieces into the fewest windows of at most ``window`` consecutive pieces, balanced so the last
    window is not left with a few pieces (which would mix few row groups into the epoch's last batches)."""
    windows, first = [], 0
    bounds = balanced_bounds(len(pieces), window)
    for i, j in itertools.pairwise(bounds):
        if i == j:
            continue  # no pieces at all (an empty shard)
        w = Window(len(windows), tuple(pieces[i:j]), first)
        windows.append(w)
        first = w.stop_row
    return tuple(windows)


def window_permutation(
    rows: int, seed: int, epoch: int, rank: int, world_size: int, window: int, shuffle: bool = True
) -> np.ndarray | None:
    """The permutation of a window's rows (``None`` without shuffle)."""
    if not shuffle:
        return None
    rng = np.random.default_rng([seed, epoch, rank, world_size, window, _TAG_WINDOW])
    return rng.permutation(rows)


def transform_rng(seed: int, epoch: int, rank: int, world_size: int, batch: int) -> np.random.Generator:
    """The RNG handed to a user transform for one batch: the same whatever pool or worker runs it."""
    return np.random.default_rng([seed, epoch, rank, world_size, batch, _TAG_TRANSFORM])


def plan_epoch(
    sizes,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int,
    shuffle: bool = True,
    sample: float | None = None,
    drop_last: bool = False,
    window: int = MIN_MIX,
    max_piece_rows: int | None = None,
) -> EpochPlan:
    """Plan one rank's epoch (see the module docstring for the rules).

    Args:
        sizes: Rows of every row group, in global order.
        seed: The user's seed.
        epoch: The epoch number.
        rank: This rank, in ``[0, world_size)``.
        world_size: Number of ranks.
        batch_size: Rows per batch.
        shuffle: Permute row groups and windows.
        sample: Fraction of rows kept this epoch, in ``(0, 1]`` (``None`` keeps all).
        drop_last: Yield only full batches.
        window: Pieces shuffled together.
        max_piece_rows: Cut longer pieces (bounds the rows decoded at once).

    Returns:
        The rank's plan.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = sample_counts(sizes, sample, seed, epoch)
    order = group_order(len(sizes), seed, epoch, shuffle)
    total = int(counts.sum())
    bounds = shard_bounds(total, world_size)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    # Interleaving slices mixes row groups; without shuffle the stream must stay in source order.
    pieces = split_pieces(pieces_in_range(order, counts, lo, hi), max_piece_rows, interleave=window if shuffle else 1)
    windows = make_windows(pieces, max(1, window))
    batches = num_batches(total, world_size, batch_size, drop_last)
    kept = None if sample is None or sample >= 1 else tuple(int(c) for c in counts)
    return EpochPlan(epoch, rank, world_size, windows, batch_bounds(hi - lo, batches, batch_size, drop_last), kept)


@dataclass(frozen=True)
class Planner:
    """``planner(epoch)`` plans one epoch of one rank with fixed settings (see :func:`plan_epoch`)."""

    sizes: tuple[int, ...]
    seed: int
    rank: int
    world_size: int
    batch_size: int
    shuffle: bool
    sample: float | None
    drop_last: bool
    window: int
    max_piece_rows: int | None

    def __call__(self, epoch: int) -> EpochPlan:
        return plan_epoch(
            self.sizes, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
            batch_size=self.batch_size, shuffle=self.shuffle, sample=self.sample, drop_last=self.drop_last,
            window=self.window, max_piece_rows=self.max_piece_rows,
        )


def window_size_for(mean_group_rows: float, mean_group_bytes: float, *, shuffle_buffer: int | None,
                    window_bytes: int, num_groups: int, max_window: int = 64,
                    min_mix: int = 1, largest_group_bytes: float = 0.0,
                    largest_row_bytes: float = 0.0) -> tuple[int, int | None]:
    """Choose ``(window, max_piece_rows)`` from a shuffle buffer (rows) or a byte budget for one window.

    Args:
        mean_group_rows: Mean rows per row group.
        mean_group_bytes: Mean decoded bytes per row group.
        shuffle_buffer: Rows to shuffle together, if the user asked for a size.
        window_bytes: Bytes one window may take when decoded.
        num_groups: Row groups in the dataset, or in one rank's share of it (a window never needs more).
        max_window: Cap on pieces per window without a shuffle buffer (bounds the time to the first
            batch on caches of many tiny files).
        min_mix: Row groups a window should mix (at most ``num_groups``) without a shuffle buffer: when
            fewer whole row groups fit in ``window_bytes``, windows interleave slices instead, as for
            row groups larger than the window.
        largest_group_bytes: Decoded bytes of the largest row group: one larger than ``window_bytes`` is
            streamed in slices even when the mean fits (a skewed dataset), so no window holds it whole.
        largest_row_bytes: Decoded bytes per row of the densest row group: slices are cut to fit it.

    Returns:
        Pieces per window, and the longest piece in rows (``None``: whole row groups). When a row group
        is larger than a window's share, windows interleave one slice from each of up to 10 row groups
        (each streamed front to back), so memory stays within the share and batches still mix. Rows so
        large that the share holds fewer than 10 of them make windows of fewer slices (one row each): the
        budget holds, and batches mix fewer row groups (the reader warns).
    """
    bytes_per_row = max(1.0, mean_group_bytes / max(1.0, mean_group_rows))
    whole = int(window_bytes // max(1.0, mean_group_bytes))  # whole row groups that fit in a window
    # Windows are balanced (make_windows): 11 row groups in windows of at most 10 are 6 + 5.
    runs = balanced_bounds(num_groups, max(1, min(whole, max_window)))
    balanced = runs[-1] - runs[-2]  # the smallest window
    if (whole < 1 or largest_group_bytes > window_bytes
            or (shuffle_buffer is None and balanced < min(min_mix, num_groups, STREAMS))):  # interleave slices
        # 10 pieces whenever there are MIN_MIX (8) row groups or more (a window may then take two slices of a
        # group): balanced windows of at most 10 pieces hold 8 or more once there are 40 (see split_pieces)
        window = STREAMS if num_groups >= MIN_MIX else max(1, num_groups)
        if shuffle_buffer is not None:
            window = max(1, min(window, shuffle_buffer))
        rows_fit = int(window_bytes // max(bytes_per_row, largest_row_bytes))  # rows a window's share holds
        window = max(1, min(window, rows_fit))
        return window, max(1, rows_fit // window)
    if shuffle_buffer is not None:
        window = math.ceil(shuffle_buffer / max(1.0, mean_group_rows))
    else:
        window = min(max_window, whole)
    return max(1, min(window, max(1, num_groups))), None


_MAX_PREFETCH = 32  # a deeper ready queue only added memory whose first touch costs CPU (see loader.reader)


def size_text(n: float) -> str:
    """``n`` bytes for a message: ``41.9 MiB``, ``18.5 KiB``, ``900 bytes``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n:.0f} bytes"


@dataclass(frozen=True)
class BatchDepths:
    """How many finished batches a reader keeps, chosen from its memory budget (:func:`batch_depths`).

    Attributes:
        batch_bytes: Estimated bytes of one batch (the manifest's uncompressed bytes per row times its rows).
        prefetch: Ready queue size, in batches.
        batches_per_task: Batches cut and finished by one pool task.
        batches_ahead: Finishing tasks in flight (each of ``batches_per_task`` batches).
        over_budget: One batch alone is larger than the ready queue's share of the budget.
    """

    batch_bytes: float
    prefetch: int
    batches_per_task: int
    batches_ahead: int
    over_budget: bool

    @property
    def peak_batches(self) -> int:
        """Most finished batches in memory at once: the queue, the tasks in flight, the one the producer is
        handing over and the consumer's."""
        return self.prefetch + self.batches_ahead * self.batches_per_task + 2

    @property
    def peak_batch_bytes(self) -> float:
        """Estimated bytes of :attr:`peak_batches`."""
        return self.peak_batches * self.batch_bytes


def batch_depths(budget: int, batch_bytes: float, workers: int, pool: str,
                 prefetch: int | None = None) -> BatchDepths:
    """Size the ready queue and the finishing lookahead from the memory budget.

    The ready queue gets an eighth of ``budget`` (``prefetch`` batches, 1 to 32, unless given) and the batches
    being finished a quarter (``batches_ahead`` tasks of ``batches_per_task`` batches, at least one task, at
    most ``max(4, 2 * workers)``); the rest goes to the reads and windows. A batch larger than the queue's
    share is allowed (one ready, one task in flight) but flagged ``over_budget``.
    """
    batch_bytes = max(1.0, float(batch_bytes))
    fit = int((budget // 8) // batch_bytes)  # batches in the ready queue's share
    if prefetch is None:
        prefetch = min(_MAX_PREFETCH, max(1, fit))
    if pool == "serial":
        per_task, ahead = 1, 1
    else:
        per_task = max(1, min(16, prefetch // 4))
        ahead = max(1, min(max(4, 2 * workers), int((budget // 4) // (batch_bytes * per_task))))
    return BatchDepths(batch_bytes, prefetch, per_task, ahead, fit < 1)
