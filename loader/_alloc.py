"""Allocator setting applied when ``loader`` is imported, before pyarrow loads (imported first by the package).

pyarrow's default allocator, mimalloc 3, asks the kernel for transparent huge pages on its arena
(``madvise(MADV_HUGEPAGE)`` over 1 GiB). With the kernel's usual ``defrag=madvise`` setting, a fault on such
a region may stall on direct compaction to find a free 2 MiB page, and every huge page is zeroed whole. The
reader touches its memory budget (decoded row groups, the shuffle window, the ready queue) within its first
second, so the stalls land on the first epoch, and they come and go with the state of the host's memory. In
``bench/bench_reader.py`` fresh-process runs of the thread reader (1000 batches, interleaved trials on the
shared 2-core development host): in one period the first reader of a process spent 0.28-0.65 s of system
time with huge pages against 0.14-0.2 s without, and the median time to the 1000th batch was 0.36 s against
0.27 s (8 trials each, every no-huge-page trial within 0.26-0.28 s); in a later period with no stalls, huge
pages were slightly ahead, 0.274 s against 0.283 s (12 trials each). Predictable first epochs are worth the
few percent. A plain pyarrow scan, which touches little memory, was unaffected.

mimalloc reads its options once, when pyarrow's library loads, so this only takes effect if ``loader`` is
imported before ``pyarrow``; it never overrides a value already in the environment (set
``MIMALLOC_ALLOW_THP=1`` to keep mimalloc's default). It concerns Arrow's allocator only, not the rest of
the process; the environment is inherited by process-pool and DataLoader workers.
"""

from __future__ import annotations

import os
import sys

SETTINGS = {"MIMALLOC_ALLOW_THP": "0"}

#: Whether the settings could still reach pyarrow's allocator (pyarrow not yet loaded at import).
APPLIED = "pyarrow" not in sys.modules and "pyarrow.lib" not in sys.modules
if APPLIED:
    for _key, _value in SETTINGS.items():
        os.environ.setdefault(_key, _value)
