"""``python -m node`` is the ``sedma`` command."""

import sys

from node.cli import main

sys.exit(main())
