"""cmrfm: a vision foundation model toolkit for cardiac MRI."""

__version__ = "0.1.0"
