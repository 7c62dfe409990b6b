"""``python -m otx``: the ``otx`` command, for when the environment's ``bin/`` is not on ``PATH``."""

import sys

from otx.cli import main

if __name__ == "__main__":
    sys.exit(main())
