"""Data stores and streaming datasets (image_batches.py: X-ray images streamed in batches)."""
