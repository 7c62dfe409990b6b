"""The ``otx`` command: the console script's entry point, and ``python -m otx`` where ``bin/`` is not on ``PATH``."""

import sys


def main() -> int:
    """Run the command line (``otx.cli.main``); a Ctrl-C while it loads is one line and exit 130.

    Loading the command line takes 0.15 s and more (jsonargparse, then each verb's libraries), before
    its own stop handling is installed: a Ctrl-C then printed Python's traceback of the import under
    way (before 2026-12-07). SIGTERM there ends the process as the system does, without a word.
    """
    try:
        from otx.cli import main as command_line
    except KeyboardInterrupt:
        from otx.errors import STOP_LINE  # (after the try: nothing more before it)

        sys.stderr.write(STOP_LINE.format(signal="SIGINT") + "\n")
        return 130
    return command_line()


if __name__ == "__main__":
    sys.exit(main())
