import sys

from .cli import main

if __name__ == "__main__":  # importing the package's modules (tools, tests) must not run the CLI
    sys.exit(main())
