"""The release version of all three packages (one distribution, one version)."""

__version__ = "0.1.0"
