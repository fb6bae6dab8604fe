"""`python -m gpu_runner.serve …`: the same as `python -m gpu_runner serve …`."""

import sys

from gpu_runner.serve import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m gpu_runner.serve"))
