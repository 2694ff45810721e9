"""The engine's version (its own module: config reads it without importing the package)."""

__version__ = "0.1.0"
