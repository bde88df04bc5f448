"""The embedded default data: seeded CT-like phantoms whose class is carried by fine texture.

Each image is a body ellipse with organ ellipses, a bright spine, and one lesion inside an organ. The lesion
is barely brighter than its organ; its class is a texture of a 2-3 pixel period at low contrast:
  0 homogeneous, 1 fine stripes, 2 fine checkerboard, 3 pixel speckle (with num_classes = 4).
That detail is what a denoiser smooths away first, so enhancement and recognition pull against each other.
Masks for segmentation: 0 background/body, 1 organ, 2 lesion.

Every image is generated from (seed, index) alone, so a phantom set is reproducible and its first k images
do not depend on how many were asked for.

Generator versions (`data.phantom_version`; version 1 stays the default, so committed results regenerate):
  1  the original: lesion radius 0.06-0.09 x size (about 40 px at 48²), stripe period 2.5-3.5 px, 2-px
     checker blocks. Its ×2-pooled (sr2) input erases the checkerboard in 3 of 4 phases, and at texture
     contrast 0.06 the class sits below the noise floor of sigma 0.1.
  2  a testbed where the premise of task-driven enhancement can hold (evidence audit §2): lesion radius
     0.12-0.16 x size (about 100-190 px at 48²), stripe period 4.5-6 px and 4-px checker blocks, so ×2
     pooling keeps every class; meant with texture contrast about 0.12-0.15 at sigma 0.1 (class evidence
     above the noise floor, still in the fine detail an L1 denoiser attenuates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEG_CLASSES = 3  # background, organ, lesion
LESION_OFFSET = 0.02  # lesion brightness over its organ (its texture carries the class)
TEXTURE_NAMES = ("homogeneous", "stripes", "checkerboard", "speckle")


@dataclass(frozen=True)
class GeneratorParams:
    """The geometry of one generator version (see the module docstring)."""

    lesion_radius: tuple[float, float]  # as a share of the image size
    stripe_period: tuple[float, float]  # pixels
    checker_block: int  # pixels


GENERATORS = {1: GeneratorParams((0.06, 0.09), (2.5, 3.5), 2),
              2: GeneratorParams((0.12, 0.16), (4.5, 6.0), 4)}


@dataclass
class PhantomSet:
    """images (N, 1, H, W) float32 in [0, 1]; labels (N,) int64; masks (N, H, W) int64."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return u * u + v * v <= 1.0


def _texture(kind: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator,
             gen: GeneratorParams = GENERATORS[1]) -> np.ndarray:
    """Zero-mean unit-amplitude texture of class `kind` over the whole grid."""
    if kind == 0:
        return np.zeros_like(yy)
    if kind == 1:
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(*gen.stripe_period)
        return np.sign(np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 6.3)))
    if kind == 2:
        b = gen.checker_block
        ox, oy = rng.integers(0, b, size=2)
        return np.where(((xx.astype(int) + ox) // b + (yy.astype(int) + oy) // b) % 2 == 0, 1.0, -1.0)
    return rng.choice([-1.0, 1.0], size=yy.shape)


def make_phantom(seed: int, index: int, size: int = 64, num_classes: int = 3, texture_contrast: float = 0.06,
                 version: int = 1):
    """One phantom (image (H, W) float32, label, mask (H, W) int64), determined by (seed, index, version)."""
    gen = GENERATORS[version]
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(num_classes))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    s = size
    img = np.zeros((s, s))
    mask = np.zeros((s, s), dtype=np.int64)

    # body: soft tissue with a gentle intensity gradient (CT-like, not flat)
    body = _ellipse(yy, xx, s * rng.uniform(0.47, 0.53), s * rng.uniform(0.47, 0.53), s * rng.uniform(0.36, 0.42),
                    s * rng.uniform(0.40, 0.46), rng.uniform(-0.2, 0.2))
    img[body] = 0.30 + 0.04 * ((yy[body] / s) - 0.5)
    # organs (up to 3) and a spine
    organs = []
    for _ in range(3):
        cy, cx = s * rng.uniform(0.35, 0.65), s * rng.uniform(0.28, 0.72)
        ry, rx = s * rng.uniform(0.10, 0.17), s * rng.uniform(0.10, 0.17)
        o = _ellipse(yy, xx, cy, cx, ry, rx, rng.uniform(0, np.pi)) & body
        img[o] = rng.uniform(0.45, 0.62)
        mask[o] = 1
        organs.append((o, cy, cx, ry, rx))
    spine = _ellipse(yy, xx, s * 0.78, s * rng.uniform(0.47, 0.53), s * 0.06, s * 0.06, 0.0) & body
    img[spine] = 0.9
    mask[spine] = 0

    # lesion inside the largest organ: slightly brighter, class carried by texture
    o, cy, cx, ry, rx = max(organs, key=lambda t: t[0].sum())
    r = s * rng.uniform(*gen.lesion_radius)
    ly = cy + rng.uniform(-0.4, 0.4) * max(ry - r, 0)
    lx = cx + rng.uniform(-0.4, 0.4) * max(rx - r, 0)
    lesion = _ellipse(yy, xx, ly, lx, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), rng.uniform(0, np.pi))
    base = img[lesion].mean() if lesion.any() else 0.5
    img[lesion] = base + LESION_OFFSET + texture_contrast * _texture(label, yy, xx, rng, gen)[lesion]
    mask[lesion] = 2
    return np.clip(img, 0.0, 1.0).astype(np.float32), label, mask


def make_phantoms(n: int, seed: int, size: int = 64, num_classes: int = 3, texture_contrast: float = 0.06,
                  offset: int = 0, version: int = 1) -> PhantomSet:
    """`n` phantoms with indices offset .. offset + n - 1 (use disjoint offsets for train/val/test)."""
    if num_classes > len(TEXTURE_NAMES):
        raise ValueError(f"phantoms carry at most {len(TEXTURE_NAMES)} texture classes, got {num_classes}")
    if version not in GENERATORS:
        raise ValueError(f"phantom generator version {version!r} does not exist; choose from {sorted(GENERATORS)}")
    imgs = np.empty((n, 1, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    masks = np.empty((n, size, size), dtype=np.int64)
    for i in range(n):
        imgs[i, 0], labels[i], masks[i] = make_phantom(seed, offset + i, size, num_classes,
                                                      texture_contrast, version)
    return PhantomSet(imgs, labels, masks)
