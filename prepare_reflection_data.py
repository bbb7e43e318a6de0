#!/usr/bin/env python
"""Stage 3 data: `python prepare_reflection_data.py --config config.yaml` == `main.py --stage reflect`."""

import sys

from mathse.cli import main

if __name__ == "__main__":
    sys.exit(main(["--stage", "reflect", *sys.argv[1:]]))
