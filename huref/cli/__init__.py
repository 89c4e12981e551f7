"""The ``huref`` command line: a thin shell over the Python API."""

from huref.cli.app import app, main

__all__ = ["app", "main"]
