"""Entry point for `ray job submit -- python jobs/pipeline.py ...`: the whole pipeline."""

import sys

from biocap_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
