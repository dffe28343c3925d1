"""A publisher that stops for good right before its new CURRENT is moved into place (its version renamed into
place and the temporary CURRENT written), for tests to kill there (audit W).

Usage: ``python tests/publish_stopped_w.py ROOT`` publishes 50 rows to dataset ``d`` under ``ROOT`` (a local
path or a URL) with ``keep_versions=2``, prints ``switching`` when it stops, and sleeps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[1])


def main(root: str) -> None:
    sys.path.insert(0, REPO)
    import pyarrow as pa

    import loader
    from loader import fs as lfs

    real = lfs.replace_file

    def stop_before_current(fs, src: str, dst: str) -> None:
        if dst.endswith("/CURRENT"):
            print("switching", flush=True)
            time.sleep(300)
        real(fs, src, dst)

    lfs.replace_file = stop_before_current  # the filesystem step, in this process only
    loader.write_cache(pa.table({"id": list(range(1000, 1050))}), root, "d", keep_versions=2)


if __name__ == "__main__":
    main(sys.argv[1])
