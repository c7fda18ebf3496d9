"""Any class-per-folder image tree (LabelMe 8-scene and Caltech101 are distributed that way), resized to a
square, with the DAL paper's per-class half/half split (``split='half'``) or train/val/test ``ratios``."""

from pathlib import Path

from .registry import register
from .splits import make_splits
from .torchvision_sets import images_to_array


@register("image_folder")
def image_folder(root=None, download=False, seed=0, image_size: int = 64, split: str = "half", **options):
    from torchvision.datasets import ImageFolder

    root = None if root is None else Path(root).expanduser()
    if root is None or not root.is_dir():
        raise ValueError(
            f"root={root!r} is not allowed: dataset 'image_folder' needs root to be a directory "
            "with one sub-directory of images per class"
        )
    data = ImageFolder(str(root))
    x, y = images_to_array(data, image_size)
    return make_splits(
        x,
        y,
        seed=seed,
        split=split,
        class_names=list(data.classes),
        info={"root": str(root), "image_size": image_size},
        **options,
    )
