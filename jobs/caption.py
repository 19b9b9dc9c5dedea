"""Entry point for `ray job submit -- python jobs/caption.py SRC DST --config ...`."""

import sys

from biocap_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["caption", "run", *sys.argv[1:]]))
