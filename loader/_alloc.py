"""Allocator setting applied when ``loader`` is imported, before pyarrow loads (imported first by the package).

pyarrow's default allocator, mimalloc 3, decommits freed memory (``MADV_DONTNEED``) soon after it is
freed. The reader frees a shuffle window's decoded row groups and decodes the next ones into fresh memory,
so with decommits every window is page-faulted back in, and the kernel zeroes it again (as 2 MiB huge
pages): about a fifth of the reader's CPU time in a ``perf`` profile of ``bench/bench_reader.py``, and half
its system time. With ``MIMALLOC_PURGE_DECOMMITS=0`` mimalloc resets freed memory instead (``MADV_FREE``):
the kernel may still reclaim it under memory pressure, and until it does, reusing it costs nothing.

mimalloc reads its options once, when pyarrow's library loads, so this only takes effect if ``loader`` is
imported before ``pyarrow``; it never overrides a value already in the environment (set
``MIMALLOC_PURGE_DECOMMITS=1`` to keep mimalloc's default). The environment is inherited by process-pool
and DataLoader workers.
"""

from __future__ import annotations

import os
import sys

SETTINGS = {"MIMALLOC_PURGE_DECOMMITS": "0"}

#: Whether the settings could still reach pyarrow's allocator (pyarrow not yet loaded at import).
APPLIED = "pyarrow" not in sys.modules and "pyarrow.lib" not in sys.modules
if APPLIED:
    for _key, _value in SETTINGS.items():
        os.environ.setdefault(_key, _value)
