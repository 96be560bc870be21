"""Stages 1-2 of the chest X-ray pipeline (weights, data) and the helpers every stage shares.

Dependency direction: `learning` may import `scraper`, never the reverse.
"""

__version__ = "0.1.0"  # the one place; setup.cfg reads it (version = attr: ...)
