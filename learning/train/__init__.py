"""Training: heads on features and fine-tuning of VGG16 blocks from images (finetune.py, augment.py)."""
