"""Data: UTKFace labels, raw sources, image decoding, augmentation, the balance plan, splits,
loading a split and the synthetic demo set."""
