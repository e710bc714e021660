"""Entry point: `python run.py` serves; `python run.py license …`, `user …`, `backup PATH` manage data."""

import sys

from ttboost.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
