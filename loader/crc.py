"""CRC-32 (the zlib polynomial, as ``zlib.crc32`` and Spark SQL's ``crc32``) at memory speed when possible.

Every checksum larder stores or checks goes through :func:`crc32`. With the optional ``zlib-ng`` package
installed (``pip install -e '.[fast]'`` in the checkout) it runs zlib-ng's vectorised CRC-32 (PCLMULQDQ / ARMv8 CRC),
about 3x faster than the stdlib's on the development machine; otherwise the stdlib's ``zlib.crc32``. Both
return identical values, so caches written with one are checked with the other. Both release the GIL on
large buffers, so reader threads checksum in parallel.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

try:  # optional accelerator: same polynomial, same results
    from zlib_ng import zlib_ng as _zlib_ng
except ImportError:  # pragma: no cover - depends on the environment
    _zlib_ng = None

IMPLEMENTATION = "zlib-ng" if _zlib_ng is not None else "zlib"

crc32: Callable[..., int] = _zlib_ng.crc32 if _zlib_ng is not None else zlib.crc32
"""``crc32(data, value=0) -> int``: CRC-32 of a bytes-like object, continuing from ``value``."""

__all__ = ["IMPLEMENTATION", "crc32"]
