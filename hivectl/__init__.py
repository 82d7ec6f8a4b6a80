"""Hive: admit compute nodes, track their health and run jobs on them, over NATS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hive")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
