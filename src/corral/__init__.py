"""corral runs AI coding agents on your own machines, each in a sandbox whose only way out is a filtering proxy."""

__version__ = "0.1.0"
