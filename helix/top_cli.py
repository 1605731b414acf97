"""`helix top`: poll a helix server's /metrics and redraw the dashboard (helix/dashboard.py).

In -> Out: --url -> GET /metrics every --interval -> `parse_metrics` -> `History` -> `render`
-> a rich Live frame (or one printed frame with --once).
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from typing import Any

from helix.dashboard import History, Snapshot, parse_metrics, render


def poll(base_url: str, time_s: float, timeout_s: float = 2.0) -> tuple[Snapshot | None, str]:
    """Scrape `base_url`/metrics: (snapshot, "") or (None, why it failed)."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
        return parse_metrics(text, time_s), ""
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return None, getattr(exc.reason, "strerror", None) or str(exc.reason)
    except (OSError, ValueError) as exc:
        return None, getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"


def run_top(
    base_url: str, interval_s: float = 1.0, *, once: bool = False, console: Any = None
) -> int:
    """Poll and redraw every `interval_s` until Ctrl-C (exit 0). `once` prints one frame from two
    scrapes `interval_s` apart, so rates show, and returns 1 if the server did not answer."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    history = History()

    def scrape() -> str:
        snapshot, error = poll(base_url, time.monotonic(), timeout_s=max(interval_s, 1.0))
        if snapshot is not None:
            history.push(snapshot)
        return error

    try:
        if once:
            error = scrape()
            if not error:
                time.sleep(interval_s)
                error = scrape()
            console.print(render(history.latest, history, url=base_url, error=error))
            return 1 if error else 0
        with Live(console=console, auto_refresh=False) as live:
            while True:
                started = time.monotonic()
                error = scrape()
                live.update(render(history.latest, history, url=base_url, error=error))
                live.refresh()
                time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "top",
        help="live throughput dashboard of a running helix server",
        description="Poll URL/metrics and show per-node KV usage, tokens/s and queues, "
        "routed against planned flow per edge, a throughput sparkline and latency percentiles.",
    )
    p.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds per poll")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    from helix.bench_cli import normalize_base_url

    if not args.interval > 0:
        raise ValueError(f"--interval must be > 0, got {args.interval}")
    return run_top(normalize_base_url(args.url), args.interval, once=args.once)
