"""The package version, in one place (imported by the package, checkpoints and exports)."""

__version__ = "0.1.0"
