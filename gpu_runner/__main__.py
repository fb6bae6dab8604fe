"""`python -m gpu_runner …`: see `gpu_runner.cli`."""

import sys

from gpu_runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
