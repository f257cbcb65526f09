"""``python -m workers PROVIDER [PROVIDER ...]``: start a worker pool."""

import argparse

from dispatcher.settings import Settings
from workers.pool import run_pool


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("providers", nargs="+", help="providers whose queues this pool consumes")
    args = parser.parse_args()
    run_pool(args.providers, Settings())


if __name__ == "__main__":
    main()
