"""Moved to ``train.augment``: the training-pair augmentation is part of the trainer.

The trainer (``train/``) is not installed with ``exemplar_core``; it runs from the repository
root (``python -m train``), where ``from train.augment import make_pair`` works.
"""

raise ImportError(
    "exemplar_core.augment moved to train.augment: the training-pair augmentation is part of the "
    "trainer, which runs from the repository root (python -m train); import it from there with "
    "'from train.augment import ...'"
)
