"""Stages 3-6 of the chest X-ray pipeline: features, examples, head training, attribution."""
import os

# TensorFlow's C++ start-up chatter (CPU feature notices, oneDNN hints) is not for our users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
