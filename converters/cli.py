"""`convert-weights`: download, convert, verify and cache hub checkpoints."""

import sys


def main(argv=None):
    print("convert-weights: the converter is not available in this version yet.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
