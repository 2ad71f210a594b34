"""`images:DIR`: a folder of images, preprocessed the way the model saw its training data.

The preprocessing spec follows the source after a `?`, as comma-separated key=value pairs; every key
has a default read from the model's input spec, so `images:DIR` alone feeds a model whose input is
1x3x224x224 float32 with RGB pixels scaled to [0, 1], resized to cover 224x224 and center-cropped:

    --calib 'images:data/val?resize=256,crop=224,mean=imagenet,std=imagenet'
    --calib 'images:frames?resize=640x640,layout=nhwc,channels=bgr,scale=1'

Keys (applied in this order):
  resize    cover (default: the shorter side scaled so the crop fits), N (shorter side to N, aspect kept),
            or HxW (exact, aspect not kept)
  crop      N or HxW, a center crop (default: the model's height and width)
  interp    bilinear (default), bicubic, nearest, lanczos, box or hamming
  channels  rgb, bgr or gray (default: gray for one channel, rgb for three)
  scale     a factor for the 0-255 pixel values (default 1/255; 1 for an integer input)
  mean, std per channel in the model's channel order, joined by '/', e.g. 0.485/0.456/0.406, or `imagenet`
            (default 0 and 1); the result is (pixel * scale - mean) / std
  layout    nchw or nhwc (default: read from where the model's input has 1 or 3 channels)

Subfolders of DIR are classes (sorted names, labels 0..K-1) as in torchvision's ImageFolder. Pillow and
numpy only; images are decoded one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from modelport.calibration.dataset import SourceBase
from modelport.calibration.folders import scan_folder
from modelport.errors import BadInput
from modelport.specs import TensorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERP = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
_KEYS = ("resize", "crop", "interp", "channels", "scale", "mean", "std", "layout")
_HINT = ("Write images:DIR?key=value,... with keys " + ", ".join(_KEYS) +
         ", e.g. images:val?resize=256,crop=224,mean=imagenet,std=imagenet.")


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes one model input sample."""

    crop: tuple[int, int]
    resize: str = "cover"  # "cover", "N" or "HxW"
    interp: str = "bilinear"
    channels: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nchw"
    dtype: str = "float32"

    def to_text(self) -> str:
        """The spec in the command line's syntax: every key, defaults included."""
        crop = f"{self.crop[0]}x{self.crop[1]}"
        nums = lambda v: "/".join(f"{x:g}" for x in v)  # noqa: E731
        return (f"resize={self.resize},crop={crop},interp={self.interp},channels={self.channels},"
                f"scale={Fraction(self.scale).limit_denominator(100000)},mean={nums(self.mean)},std={nums(self.std)},layout={self.layout}")

    def apply(self, image: Any) -> np.ndarray:
        """A PIL image as one sample: a float32 (or uint8) array with a leading batch axis of 1."""
        from PIL import Image, ImageOps

        resample = getattr(Image.Resampling, self.interp.upper())
        image = ImageOps.exif_transpose(image)
        image = image.convert("L" if self.channels == "gray" else "RGB")
        image = image.resize(self._resized(image.size), resample=resample)
        w, h = image.size
        ch, cw = self.crop
        if w < cw or h < ch:
            raise BadInput(f"resize={self.resize} gives {h}x{w}, smaller than the crop {ch}x{cw}.",
                           hint="Give a larger resize=, or leave it out (resize=cover).")
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if self.channels == "bgr":
            pixels = pixels[..., ::-1]
        if np.dtype(self.dtype).kind == "f":
            mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
            pixels = (pixels.astype(np.float32) * np.float32(self.scale) - mean) / std
        if self.layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels)[None]

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) to resize to before the center crop."""
        w, h = size
        ch, cw = self.crop
        if self.resize == "cover":
            factor = max(ch / h, cw / w)
            return max(cw, round(w * factor)), max(ch, round(h * factor))
        if "x" in self.resize:
            rh, rw = (int(d) for d in self.resize.split("x"))
            return rw, rh
        short = int(self.resize)
        return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)


def _size(text: str, key: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise BadInput(f"images: {key}={text!r} is not N or HxW.", hint=_HINT) from None
    if len(dims) not in (1, 2) or any(d < 1 for d in dims):
        raise BadInput(f"images: {key}={text!r} is not N or HxW with positive sizes.", hint=_HINT)
    return (dims[0], dims[0]) if len(dims) == 1 else (dims[0], dims[1])


def _numbers(text: str, key: str, preset: tuple[float, ...]) -> tuple[float, ...]:
    if text.lower() == "imagenet":
        return preset
    try:
        return tuple(float(Fraction(p)) for p in text.split("/"))
    except (ValueError, ZeroDivisionError):
        raise BadInput(f"images: {key}={text!r} is not a number, numbers joined by '/', or imagenet.",
                       hint=_HINT) from None


def parse_options(text: str) -> dict[str, str]:
    """`key=value,key=value` as a dict, with unknown keys an error."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise BadInput(f"images: cannot read {pair!r} in the preprocessing spec.", hint=_HINT)
        if key not in _KEYS:
            raise BadInput(f"images: unknown preprocessing key {key!r}.", hint=_HINT)
        out[key] = value.strip()
    return out


def _infer_layout(shape: tuple[int | str, ...]) -> str:
    channels_first, channels_last = shape[1] in (1, 3), shape[3] in (1, 3)
    if channels_first != channels_last:
        return "nchw" if channels_first else "nhwc"
    raise BadInput(f"images: cannot tell whether the input {'x'.join(map(str, shape))} is NCHW or NHWC.",
                   hint="Add layout=nchw or layout=nhwc to the preprocessing spec.")


def preprocess_for(spec: TensorSpec, options: dict[str, str]) -> Preprocess:
    """The preprocessing for the model input `spec`: the options given, defaults read from the spec."""
    if len(spec.shape) != 4:
        raise BadInput(f"images: feeds an image input of rank 4 (NCHW or NHWC); the model's input is {spec}.",
                       hint="Use an .npz or a callable source for other inputs.")
    layout = options.get("layout", "").lower() or _infer_layout(spec.shape)
    if layout not in ("nchw", "nhwc"):
        raise BadInput(f"images: layout={layout!r} is not nchw or nhwc.", hint=_HINT)
    if layout == "nchw":
        c, h, w = spec.shape[1], spec.shape[2], spec.shape[3]
    else:
        h, w, c = spec.shape[1], spec.shape[2], spec.shape[3]
    if c not in (1, 3):
        raise BadInput(f"images: the input {spec} has {c} channels in {layout.upper()}; images give 1 or 3.",
                       hint="Check layout=, or use an .npz or a callable source.")
    channels = options.get("channels", "gray" if c == 1 else "rgb").lower()
    if channels not in ("rgb", "bgr", "gray") or (channels == "gray") != (c == 1):
        raise BadInput(f"images: channels={channels} does not fit the input {spec} ({c} channels).",
                       hint="Use gray for one channel, rgb or bgr for three.")
    if "crop" in options:
        crop = _size(options["crop"], "crop")
    elif isinstance(h, int) and isinstance(w, int):
        crop = (h, w)
    else:
        raise BadInput(f"images: the input {spec} has a dynamic height or width.",
                       hint="Give the size with crop=HxW.")
    if isinstance(h, int) and isinstance(w, int) and crop != (h, w):
        raise BadInput(f"images: crop={crop[0]}x{crop[1]}, but the model's input {spec} takes {h}x{w}.")
    resize = options.get("resize", "cover").lower()
    if resize != "cover":
        rh, rw = _size(resize, "resize")
        exact = "x" in resize
        resize = f"{rh}x{rw}" if exact else str(rh)
        if (rh < crop[0] or rw < crop[1]) if exact else rh < min(crop):
            raise BadInput(f"images: resize={resize} is smaller than the crop {crop[0]}x{crop[1]}.", hint=_HINT)
    interp = options.get("interp", "bilinear").lower()
    if interp not in _INTERP:
        raise BadInput(f"images: interp={interp!r} is not one of {', '.join(_INTERP)}.")
    integer = np.dtype(spec.dtype).kind in "iu"
    preset_mean = IMAGENET_MEAN[::-1] if channels == "bgr" else IMAGENET_MEAN
    preset_std = IMAGENET_STD[::-1] if channels == "bgr" else IMAGENET_STD
    scale_text = options.get("scale", "1" if integer else "1/255")
    try:
        scale = float(Fraction(scale_text))
    except (ValueError, ZeroDivisionError):
        raise BadInput(f"images: scale={scale_text!r} is not a number such as 1/255 or 0.5.", hint=_HINT) from None
    mean = _numbers(options.get("mean", "0"), "mean", preset_mean)
    std = _numbers(options.get("std", "1"), "std", preset_std)
    for key, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, c):
            raise BadInput(f"images: {key} has {len(values)} values; the input has {c} channels.", hint=_HINT)
    if any(s == 0 for s in std):
        raise BadInput(f"images: std={options['std']!r} has a zero.", hint=_HINT)
    if integer and (scale != 1 or any(mean) or any(s != 1 for s in std)):
        raise BadInput(f"images: the input {spec} is {spec.dtype}, so the pixels are fed as they are.",
                       hint="Drop scale, mean and std for an integer input.")
    return Preprocess(crop=crop, resize=resize, interp=interp, channels=channels, scale=scale, mean=mean,
                      std=std, layout=layout, dtype="uint8" if integer else "float32")


class ImageFolderSource(SourceBase):
    """Images decoded and preprocessed one at a time; class subfolders give labels."""

    kind = "images"

    def __init__(self, root: Path, spec: TensorSpec, preprocess: Preprocess) -> None:
        folder = scan_folder(root, IMAGE_SUFFIXES, "image")
        self.root = root
        self.input = spec.name
        self.preprocess = preprocess
        self.files = [str(f) for f in folder.files]
        self.class_labels = folder.labels
        self.classes = folder.classes
        self.description = f"images:{root}"

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> dict[str, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as image:
                sample = {self.input: self.preprocess.apply(image)}
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BadInput(f"{path} (sample {index}) is not a readable image: {exc}",
                           hint="Remove or replace the file.") from exc
        except BadInput as exc:
            raise BadInput(f"{path} (sample {index}): {exc.message}", hint=exc.hint) from exc
        label = self.label(index)
        if label is not None:
            sample["label"] = label
        return sample

    def label(self, index: int) -> np.ndarray | None:
        return None if self.class_labels is None else np.asarray(self.class_labels[index], dtype=np.int64)

    def locate(self, index: int) -> str:
        return f"{self.files[index]} (sample {index})"

    def details(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess.to_text(), "files": len(self.files), "classes": self.classes}


def open_images(text: str, specs: Sequence[TensorSpec]) -> ImageFolderSource:
    """The source for `images:DIR[?key=value,...]` (text without the `images:` prefix)."""
    directory, _, option_text = text.partition("?")
    if not directory:
        raise BadInput("images: needs a directory, e.g. images:data/val.", hint=_HINT)
    if len(specs) != 1:
        raise BadInput(f"images: feeds a model with one image input; this model has inputs {[s.name for s in specs]}.",
                       hint="Use an .npz or a callable source (file.py:fn) that yields every input.")
    preprocess = preprocess_for(specs[0], parse_options(option_text))
    return ImageFolderSource(Path(directory), specs[0], preprocess)
