"""``python -m huref``: the same entry point as the ``huref`` command."""

from huref.cli import main

raise SystemExit(main())
