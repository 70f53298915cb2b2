"""``python -m pillow_jac``: the ``jac`` command line tool (see :mod:`pillow_jac.cli`)."""

import sys

from pillow_jac.cli import console

if __name__ == "__main__":
    sys.exit(console())
