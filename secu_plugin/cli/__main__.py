"""``python -m secu_plugin.cli``: the ``secu-cluster`` command."""

import sys

from secu_plugin.cli.command import main

sys.exit(main())
