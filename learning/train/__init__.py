"""Training: the head on stored features - the loop (loop.py), the model folder written as a
whole (model_folder.py), its plots (plots.py); and fine-tuning of VGG16 blocks from images
(finetune.py, augment.py). The stage itself is learning/fully_connected_layers_training.py."""
