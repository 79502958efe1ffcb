"""oig: a GitHub-native repository where a community improves an open chat model with data."""

__version__ = "0.1.0"
