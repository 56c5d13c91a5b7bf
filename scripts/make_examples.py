#!/usr/bin/env python
"""Build the example blobs and write the example specs (see marketplace/examples.py).

    python scripts/make_examples.py [--store DIR] [--out examples/specs] [--collab-out examples/collab]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marketplace.examples import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
