"""The contract between the Stowage agent and optimizer: report schema, label keys, units and
topology helpers. Pure: nothing in this package performs I/O."""

from shared.version import __version__

__all__ = ["__version__"]
