"""Entry point for `ray job submit -- python jobs/train.py DATA OUT --config ...`."""

import sys

from biocap_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
