#!/usr/bin/env python
"""MathSE entry point: `python main.py --stage STAGE --config config.yaml [--set key=value ...]`."""

import sys

from mathse.cli import main

if __name__ == "__main__":
    sys.exit(main())
