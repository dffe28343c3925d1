"""What every job entry point shares: exit codes and one-line error reporting.

Exit codes: 0 done (or up to date); 1 the job failed on its input or destination (a :class:`LarderError`;
the previous version stays live); 2 bad usage or conf (:class:`ConfigError`); 3 an unexpected error.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from loader.errors import ConfigError, LarderError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def guarded(body: Callable[[], str], verbose: bool = False) -> int:
    """Run ``body``; print its summary line on success, or ``larder: error: <one line>`` on failure.

    Returns:
        The process exit code.
    """
    try:
        summary = body()
    except ConfigError as e:
        print(f"larder: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except LarderError as e:
        print(f"larder: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # one line for schedulers; --verbose adds the traceback
        if verbose:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        from .failures import root_cause

        cause = root_cause(e)  # what Spark or a Python task reported, if anything
        detail = f"{first} ({cause})" if cause and cause not in first else first
        print(f"larder: error: unexpected {type(e).__name__}: {detail}", file=sys.stderr)
        return EXIT_INTERNAL
    print(summary, flush=True)
    return EXIT_OK
