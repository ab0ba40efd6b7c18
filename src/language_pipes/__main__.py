"""Allow ``python -m language_pipes``."""

from language_pipes.cli import main

raise SystemExit(main())
