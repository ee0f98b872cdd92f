"""Adaptive discriminator augmentation (StyleGAN2-ADA): the `bgc` augmentations (ops.py), their
band-limited resampling (resample.py), and the adaptive probability kept in the train state (adaptive.py)."""
