"""``python -m gateway``: the same as the ``tollgate`` command."""

from .cli import main

raise SystemExit(main())
