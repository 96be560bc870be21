"""The feature store: stage 3 writes it, stages 4-6 read it without holding it in memory.

  shards.py        .npy shard files: written once through a temp file, read row by row (preadv)
  index.py         the index pickle (transfer_features.pickle, "cxr-features/2") and
                   `open_store`, which also opens old single-pickle files ("cxr-features/1")
  incremental.py   stage 3's reuse plan, placement of rows in shards, checkpoints, clean-up
  descriptions.py  images-description.json streamed record by record (stage 4)
  splits.py        stage 4's split files (references into the index) as stage 5 reads them
  dataset.py       row sources, the one checking pass, Keras batches, streamed prediction
  image_batches.py X-ray images streamed in batches (fine-tuning from images)
"""
