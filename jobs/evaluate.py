"""Entry point for `ray job submit -- python jobs/evaluate.py DATA OUT --model ARCH:WEIGHTS ...`."""

import sys

from biocap_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
