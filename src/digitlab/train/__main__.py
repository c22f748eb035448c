"""``python -m digitlab.train ...`` (and ``torchrun -m digitlab.train ...``): same as ``digitlab train``."""

import sys

from digitlab.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
