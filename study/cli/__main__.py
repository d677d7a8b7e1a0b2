"""``python -m study.cli``: the ``ser-study`` command line."""

import sys

from study.cli import main

sys.exit(main())
