"""`python -m prune_explorer.cli`: the `prune-explorer` command."""
import sys

from . import main

sys.exit(main())
