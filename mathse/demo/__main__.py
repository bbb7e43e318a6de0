"""`python -m mathse.demo`: the bundled offline demo (mathse/demo/run.py)."""

import sys

from mathse.demo.run import main

sys.exit(main())
