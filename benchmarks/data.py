"""Representative inputs for the suite, with no download: crops of the two real photographs scikit-learn
ships (natural-image statistics, ImageNet normalisation) and token batches with varied padding."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def photo_crops(count: int = 300, size: int = 224, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Random crops (scaled, flipped) of sklearn's sample photos, as NCHW float32, ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(size, min(photo.size)))
        left = int(rng.integers(0, photo.size[0] - side + 1))
        top = int(rng.integers(0, photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        image = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
        if rng.random() < 0.5:
            image = image[:, :, ::-1]
        yield {"x": ((image - _MEAN) / _STD)[None].astype(np.float32)}


def token_batches(count: int = 300, seq: int = 128, vocab: int = 30522, seed: int = 0
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Token ids with a [CLS]/[SEP] frame and a varied real length; the rest is padding masked out."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        length = int(rng.integers(8, seq + 1))
        ids = np.zeros((1, seq), np.int64)
        ids[0, 0], ids[0, length - 1] = 101, 102
        ids[0, 1:length - 1] = rng.integers(1000, vocab, length - 2)
        mask = np.zeros((1, seq), np.int64)
        mask[0, :length] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def images() -> Iterator[dict[str, np.ndarray]]:
    """`--calib benchmarks.data:images` for the image models."""
    return photo_crops()


def tokens() -> Iterator[dict[str, np.ndarray]]:
    """`--calib benchmarks.data:tokens` for BERT."""
    return token_batches()
