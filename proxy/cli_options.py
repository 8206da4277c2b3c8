"""Options every command group shares (proxy/cli.py and the groups it adds: webhooks, queue), in a
module of their own so that each group can import them without importing proxy.cli."""
from __future__ import annotations

import click

config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Config file (default: ./config.toml when present, else built-in defaults).",
)
