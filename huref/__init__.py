"""huref: forensic audit toolkit for large language models."""

from __future__ import annotations

__version__ = "0.1.0"

from huref.errors import HurefError

__all__ = ["HurefError", "__version__"]
