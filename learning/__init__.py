"""Stages 3-6 of the chest X-ray pipeline: features, examples, head training, attribution."""
import os

# TensorFlow's C++ start-up chatter is not for our users: CPU feature notices, oneDNN hints,
# and (level 3) the harmless "NodeDef mentions attribute use_unbounded_threadpool" errors that
# TF 2.21 logs for every tf.data map once op determinism is on (stage 5). Real failures still
# surface as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0 yourself to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
