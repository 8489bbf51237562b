"""``python -m tollgate``: the same as the ``tollgate`` command."""

from tollgate.process.cli import main

raise SystemExit(main())
