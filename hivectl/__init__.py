"""Hive: admit compute nodes, track their health and run jobs on them, over NATS."""

# The one place the version is written: pyproject.toml reads it from here. (Asking
# importlib.metadata instead cost every hivectl command 35 ms of imports.)
__version__ = "0.1.0"
