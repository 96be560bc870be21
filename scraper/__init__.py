"""Stages 1-2 of the chest X-ray pipeline (weights, data) and the helpers every stage shares.

Dependency direction: `learning` may import `scraper`, never the reverse.
"""
