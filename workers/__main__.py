"""``python -m workers PROVIDER [PROVIDER ...]``: start a worker pool for providers' runs.
``python -m workers --webhooks``: start the webhook delivery pool."""

import argparse

from dispatcher.settings import Settings
from workers.pool import run_pool
from workers.webhooks import RETRY_DELAYS_S, run_webhook_pool


def _delays(text: str) -> list[float]:
    try:
        delays = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of seconds") from None
    if not delays or any(delay <= 0 for delay in delays):
        raise argparse.ArgumentTypeError("a comma-separated list of positive seconds")
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("providers", nargs="*", help="providers whose queues this pool consumes")
    parser.add_argument(
        "--webhooks", action="store_true", help="deliver webhooks (queue `webhooks`) instead"
    )
    parser.add_argument(
        "--retry-delays",
        type=_delays,
        default=None,
        help="with --webhooks: seconds to wait after each failed attempt, e.g. 5,300,1800",
    )
    args = parser.parse_args()
    if args.webhooks == bool(args.providers):
        parser.error("name providers, or give --webhooks (not both)")
    if args.retry_delays and not args.webhooks:
        parser.error("--retry-delays goes with --webhooks")
    if args.webhooks:
        run_webhook_pool(Settings(), args.retry_delays or RETRY_DELAYS_S)
    else:
        run_pool(args.providers, Settings())


if __name__ == "__main__":
    main()
