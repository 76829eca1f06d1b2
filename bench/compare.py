"""``fastconv bench`` from a source checkout: ``python bench/compare.py --help`` (the tool lives in
``fastconv.bench.compare``, so that it works from an installed package too)."""
import sys

from fastconv.bench.compare import main

if __name__ == "__main__":
    sys.exit(main())
