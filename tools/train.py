#!/usr/bin/env python
"""Same as `retinanet train ...`."""
import sys

from retinanet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
