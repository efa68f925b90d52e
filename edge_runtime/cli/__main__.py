"""``python -m sortline.edge_runtime.cli``: the ``sortline`` command (``torchrun`` starts it so)."""

import sys

from . import main

sys.exit(main())
