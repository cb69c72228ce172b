"""Image decoding and the timm transforms every dataset uses (weak-label shards, Fashion-MNIST, image folders).

Transforms emit uint8 ``[3, H, W]`` (timm's ``use_prefetcher`` form); ImageNet mean/std are applied on the device by
``datamodules.targets.BatchTransform``.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import torch
from PIL import Image
from timm.data import DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms.functional import pil_modes_mapping as PIL_RESAMPLE

IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)


def decode_image(data: bytes, draft: int = 0, tensor_jpeg: bool = False) -> Image.Image | torch.Tensor:
    """Bytes -> RGB PIL image. ``draft`` > 0 lets a JPEG decode at a reduced DCT scale that keeps both sides >= draft
    pixels (much cheaper for large sources; PIL ignores it for other formats).

    ``tensor_jpeg``: a JPEG that PIL's draft cannot shrink (a side below ``2 * draft``) is decoded by
    ``torchvision.io.decode_jpeg`` (libjpeg-turbo) into a uint8 ``[3, H, W]`` tensor instead, which timm's transforms
    take as well (``DecodeSample`` asks for it in evaluation, where it measured faster end to end:
    benchmarks/bench_label_memory.py). PNG/WEBP and shrinkable JPEGs stay with PIL; a JPEG torchvision rejects goes
    to PIL, whose error is the counted skip."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and tensor_jpeg and (not draft or min(img.size) < 2 * draft):
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))
    return img.convert("RGB")


class DraftResizedCrop:
    """timm's ``RandomResizedCropAndInterpolation`` that decodes a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8)
    at which its crop still covers the output size, then crops and resizes in one PIL ``resize(box=...)``.

    Same random draws, in the same order, as the wrapped transform (crop box from the image size in the JPEG header,
    then the interpolation), so a seeded sample gets the same crop; only the pixels come from a DCT-domain
    downscale instead of a full decode plus a larger resize (at 64 px from 256-px sources most crops decode at 1/2
    or 1/4: benchmarks/bench_data.py). Any other input (PNG, an already decoded image, a tensor) goes to the wrapped
    transform unchanged. Written here because neither timm nor torchvision fuse the crop into JPEG decoding (DALI
    and FFCV do, on their own formats).
    """

    def __init__(self, crop: Any) -> None:
        self.crop = crop
        self.size = crop.size if isinstance(crop.size, tuple) else (crop.size, crop.size)  # (h, w)

    def __repr__(self) -> str:
        return f"DraftResizedCrop({self.crop!r})"

    def __call__(self, img: Any) -> Any:
        if not isinstance(img, Image.Image) or img.format != "JPEG" or not img.tile:  # not a JPEG still to decode
            if isinstance(img, Image.Image) and img.mode != "RGB":
                img = img.convert("RGB")
            return self.crop(img)
        full_w, full_h = img.size
        i, j, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        interp = self.crop.interpolation
        interp = random.choice(interp) if isinstance(interp, (tuple, list)) else interp
        out_h, out_w = self.size
        factor = 8
        while factor > 1 and (h < factor * out_h or w < factor * out_w):
            factor //= 2
        if factor > 1:
            img.draft("RGB", (-(-full_w // factor), -(-full_h // factor)))
        img = img.convert("RGB")
        sx, sy = img.size[0] / full_w, img.size[1] / full_h
        box = (j * sx, i * sy, (j + w) * sx, (i + h) * sy)
        return img.resize((out_w, out_h), PIL_RESAMPLE[interp], box=box)


def image_transform(data_cfg: Any, train: bool, grayscale_safe: bool = False) -> Any:
    """timm transform: train = RandomResizedCrop(scale_min..1) + hflip (+ RandAugment), eval = resize + center crop;
    uint8 ``[3, H, W]`` out (timm's ``use_prefetcher`` form: ImageNet mean/std are applied on the device by
    ``datamodules.targets.BatchTransform``). ``grayscale_safe`` (small centred objects, e.g. Fashion-MNIST): the train crop keeps the whole
    image (scale and ratio 1) so the object is never cut out."""
    aug = data_cfg.augment
    if not train:
        return create_transform(
            data_cfg.img_size,
            is_training=False,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            crop_pct=1.0 if grayscale_safe else None,
            use_prefetcher=True,  # uint8 CHW out; normalized on the device (datamodules.targets)
        )
    scale = (1.0, 1.0) if grayscale_safe else (float(aug.scale_min), 1.0)
    ratio = (1.0, 1.0) if grayscale_safe else None
    transform = create_transform(
        data_cfg.img_size,
        is_training=True,
        scale=scale,
        ratio=ratio,
        hflip=float(aug.hflip),
        auto_augment=None if grayscale_safe else aug.rand_augment,
        color_jitter=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        use_prefetcher=True,
    )
    if isinstance(transform.transforms[0], RandomResizedCropAndInterpolation):
        transform.transforms[0] = DraftResizedCrop(transform.transforms[0])
    return transform


def draft_size(img_size: int, scale_min: float, train: bool) -> int:
    """Smallest source side that still gives the smallest random crop (area scale_min, aspect 3/4) full resolution."""
    if not train:
        return math.ceil(img_size / DEFAULT_CROP_PCT)  # timm's eval resize before the center crop
    return math.ceil(img_size / math.sqrt(max(scale_min, 1e-3) * 0.75))
