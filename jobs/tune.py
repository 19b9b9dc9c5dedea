"""Entry point for `ray job submit -- python jobs/tune.py DATA OUT --config ... [--name SWEEP]`."""

import sys

from biocap_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
