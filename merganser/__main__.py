"""Allow ``python -m merganser``."""

from merganser.cli import main

raise SystemExit(main())
