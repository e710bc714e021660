"""Command line: `serve` (default), `license …`, `user …`, `backup PATH`."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .logsetup import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="TTBoost server")
    parser.add_argument("--config", default="config.toml", help="path of the TOML config (default config.toml)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the server (default)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging()
    if args.command in (None, "serve"):
        from .server import serve

        serve(config)
        return 0
    return 2
