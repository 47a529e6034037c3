"""`python -m mine_vae.cli`: the same as the `mine-vae` console script."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
