"""``fastconv compare`` from a source checkout: ``python bench/compare_training.py --help`` (the tool
lives in ``fastconv.bench.compare_training``, so that it works from an installed package too)."""
import sys

from fastconv.bench.compare_training import main

if __name__ == "__main__":
    sys.exit(main())
