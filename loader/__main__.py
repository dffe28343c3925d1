"""``python -m loader``: see :mod:`loader.cli`."""

from .cli import main

raise SystemExit(main())
