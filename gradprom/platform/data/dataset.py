"""The data types every source produces: a split in memory (`ImageSet`), what the models need to know
(`DataInfo`), and the dataset that degrades each clean image on the fly, seeded per (seed, split, epoch, index).
Sources live beside this module (sources.py dispatches `data.source`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from gradprom.platform.data.degradations import Degradation
from gradprom.platform.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}  # part of every degradation seed: never renumber


@dataclass
class ImageSet:
    """One split in memory: images (N, C, H, W) float32 in [0, 1]; labels (N,) and/or masks (N, H, W); the
    site of each image (N,) where the source has sites (a store, a folder with a `site` column)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    sites: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        """The images at `idx` (indices or a boolean mask), with their labels, masks and sites."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return ImageSet(self.images[idx], pick(self.labels), pick(self.masks), pick(self.sites))


@dataclass
class DataInfo:
    """What the models need to know about the data."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int  # classification classes
    seg_classes: int  # segmentation classes (incl. background); 0 when there are no masks
    source: str

    def num_outputs(self, task: str) -> int:
        """Logits the recognizer needs for `task`."""
        return self.num_classes if task == "classification" else self.seg_classes


class EnhancementDataset(Dataset):
    """Items {x_lq, x_hq, y, index}; x_lq is made on the fly, seeded by (seed, split, epoch, index).

    Training splits draw fresh noise each epoch (`set_epoch`); val/test use a fixed draw, so every
    evaluation sees the same degraded images.
    """

    def __init__(self, data: ImageSet, degradation: Degradation, task: str, seed: int, split: str):
        if task == "classification" and data.labels is None:
            raise DataError(f"the {split} split has no labels, but task 'classification' needs them")
        if task == "segmentation" and data.masks is None:
            raise DataError(f"the {split} split has no masks, but task 'segmentation' needs them "
                            f"(a `{split}_masks` array of shape (N, H, W))")
        self.data, self.degradation, self.task, self.seed, self.split = data, degradation, task, seed, split
        self.images = torch.from_numpy(data.images)
        self.targets = torch.from_numpy(data.labels if task == "classification" else data.masks)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the noise draw of a training epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def generator(self, index: int) -> torch.Generator:
        """The per-sample generator: depends only on (seed, split, epoch, index), not on batching or workers."""
        return sample_generator(self.seed, self.split, self.epoch if self.split == "train" else 0, index)

    def __getitem__(self, index: int) -> dict:
        x_hq = self.images[index]
        x_lq = self.degradation(x_hq, self.generator(index))
        return {"x_lq": x_lq, "x_hq": x_hq, "y": self.targets[index], "index": index}


def sample_generator(seed: int, split: str, epoch: int, index: int) -> torch.Generator:
    """The degradation generator of one sample; the in-memory and the streaming datasets share it."""
    state = np.random.SeedSequence([seed, SPLIT_CODE[split], epoch, index]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
