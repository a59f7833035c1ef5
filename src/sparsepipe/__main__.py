"""``python -m sparsepipe`` = the ``sparsepipe`` command."""

import sys

from sparsepipe.cli import main

sys.exit(main())
