"""`python -m wan_engine.cli ...` (what torchrun launches): the `wan-engine` command."""
import sys

from . import main

sys.exit(main())
