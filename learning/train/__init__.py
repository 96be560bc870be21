"""Training the head: the loop (loop.py), the model folder written as a whole
(model_folder.py) and its plots (plots.py). The stage itself is
learning/fully_connected_layers_training.py."""
