"""Feature cache: a frozen backbone's convolutional features, computed once and stored as Parquet.

The DAL paper trains its two-layer head on VGG16 ImageNet features of 256x256 images (512 x 8 x 8 = 32768
values). ``compute_features`` runs the backbone once over a data set's train / val / test splits and writes
``<cache_dir>/<dataset>-<backbone>-<key>.parquet`` (columns split, label, features), the key hashing the data
set and its options, backbone, weights and transform. Trials then load it with ``dataset: features`` and never
run the backbone. Without pretrained weights it refuses, unless random initialisation is asked for explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from tune_losses.atomic import replacing

from .registry import build_dataset, register
from .splits import Split, Splits


def default_cache() -> Path:
    """TUNE_LOSSES_FEATURES, read when used (a warm driver imported this module before the command's environment)."""
    return Path(os.environ.get("TUNE_LOSSES_FEATURES", Path.home() / ".cache" / "tune_losses" / "features"))


SPLIT_DEFAULTS = {"val_fraction": None, "split": "ratios", "max_per_class": None}  # make_splits' defaults
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cached_imagenet_weights(backbone: str):
    """The torchvision ImageNet weights file if it is already in the torch hub cache (no download), else None."""
    from tune_losses.models.backbones import weights_enum

    url = weights_enum(backbone).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return path if path.is_file() else None


def resolve_weights(backbone: str, weights, random_init: bool):
    if weights is None:
        weights = _cached_imagenet_weights(backbone)
    if weights is None and not random_init:
        raise ValueError(
            f"weights: no pretrained {backbone} weights are present (none given, none in the torch "
            f"hub cache {torch.hub.get_dir()}). Pass --weights PATH (a local .pth), --weights imagenet "
            "(downloads, needs the internet), or --random-init to use a randomly initialised backbone."
        )
    return weights


def cache_key(dataset: str, options: dict, backbone: str, weights, image_size: int) -> str:
    spec = {
        "dataset": dataset,
        "options": options,
        "backbone": backbone,
        "weights": str(weights),
        "image_size": image_size,
        "transform": "resize+imagenet-normalize",
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def _embed(trunk, split: Split, image_size: int, batch_size: int, device, desc: str | None = None) -> np.ndarray | None:
    """The trunk's features of every image of ``split``, or None for an empty split (e.g. no validation split);
    ``desc``: show a tqdm bar over the batches so named."""
    from tqdm import tqdm

    out = []
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    for start in tqdm(
        range(0, len(split), batch_size), desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True
    ):
        x, _ = split.batch(slice(start, start + batch_size))
        x = x.to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        out.append(trunk((x - mean) / std).flatten(1).float().cpu().numpy())
    return np.concatenate(out) if out else None


def compute_features(
    dataset: str,
    backbone: str = "vgg16",
    weights=None,
    random_init: bool = False,
    image_size: int = 256,
    cache_dir=None,
    root=None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    **options,
) -> Path:
    """Compute (or find) the cached features of a data set; returns the Parquet file's path. ``progress``: a tqdm
    bar per split over its batches (on stderr)."""
    from tune_losses.models import build_model

    weights = resolve_weights(backbone, weights, random_init)
    key = cache_key(dataset, {**options, "seed": seed}, backbone, weights, image_size)
    path = Path(cache_dir or default_cache()) / f"{dataset}-{backbone}-{key}.parquet"
    if path.exists():
        return path
    splits = build_dataset(dataset, root=root, seed=seed, **options)
    model = build_model(backbone, num_classes=splits.num_classes, weights=weights).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trunk = model.features.to(device)
    arrays = {
        name: (
            _embed(
                trunk,
                getattr(splits, name),
                image_size,
                batch_size,
                device,
                f"{backbone} features, {name}" if progress else None,
            ),
            getattr(splits, name).y,
        )
        for name in ("train", "val", "test")
    }
    train = arrays["train"][0]
    assert train is not None, "a data set without training images"
    arrays = {
        name: (np.zeros((0, train.shape[1]), np.float32) if f is None else f, y) for name, (f, y) in arrays.items()
    }
    meta = {
        "dataset": dataset,
        "backbone": backbone,
        "weights": model.weights_source,
        "image_size": image_size,
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
        "options": options,
        "split": splits.info.get("split"),
    }
    write_features(path, arrays, meta)
    return path


def write_features(path, arrays: dict, meta: dict) -> Path:
    """Write {split: (features (n, d) float32 array, labels)} and the metadata as one Parquet table, atomically."""
    tables = []
    for name, (feats, labels) in arrays.items():
        feats = np.asarray(feats, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), type=pa.float32()), feats.shape[1])
        tables.append(
            pa.table(
                {
                    "split": pa.array([name] * len(feats), type=pa.string()),
                    "label": pa.array(np.asarray(labels), type=pa.int64()),
                    "features": column,
                }
            )
        )
    table = pa.concat_tables(tables).replace_schema_metadata({"tune_losses": json.dumps(meta, default=str)})
    with replacing(path) as staged:  # two processes caching the same features: each writes its own, one wins
        pq.write_table(table, staged)
    return Path(path)


def load_features(path) -> Splits:
    """Read a features table memory-mapped; the feature rows come out as one zero-copy float32 array."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"features path={str(path)!r} is not allowed: no such file (make it with "
            "`tune-losses features DATASET --backbone vgg16`)"
        )
    table = pq.read_table(path, memory_map=True)
    meta = json.loads(table.schema.metadata[b"tune_losses"])
    column = table.column("features").combine_chunks()
    feats = column.values.to_numpy(zero_copy_only=True).reshape(len(table), column.type.list_size)
    labels = table.column("label").to_numpy()
    which = table.column("split").to_numpy(zero_copy_only=False)
    parts = {}
    for name in ("train", "val", "test"):
        mask = which == name
        parts[name] = Split(
            torch.from_numpy(np.ascontiguousarray(feats[mask])), torch.as_tensor(labels[mask], dtype=torch.long)
        )
    info = {
        "features": str(path),
        "source": meta["dataset"],
        "backbone": meta["backbone"],
        "weights": meta["weights"],
        "options": meta.get("options", {}),
        "split": meta.get("split") or "as stored in the features table (rule not recorded)",
    }
    return Splits(parts["train"], parts["val"], parts["test"], meta["num_classes"], meta["class_names"], info)


@register("features")
def features(
    root=None,
    download=False,
    seed=0,
    path=None,
    source: str = "digits",
    backbone: str = "vgg16",
    weights=None,
    random_init: bool = False,
    image_size: int = 256,
    cache_dir=None,
    **options,
):
    """``dataset: features``: a cached features table (``path``), or the one for ``source`` + ``backbone``.
    A table's splits were fixed when it was computed: with ``path``, split options (``val_fraction``, ``split``,
    ...) must equal the ones the table was computed with, or the table's splits would silently differ from them."""
    if path is None:
        path = compute_features(
            source,
            backbone=backbone,
            weights=weights,
            random_init=random_init,
            image_size=image_size,
            cache_dir=cache_dir,
            root=root,
            seed=seed,
            **options,
        )
        return load_features(path)
    splits = load_features(path)
    stored = splits.info["options"]
    differ = {k: v for k, v in options.items() if stored.get(k, SPLIT_DEFAULTS.get(k)) != v}
    if differ:
        raise ValueError(
            f"features path={str(path)!r}: options {differ} are not allowed: the table's splits were "
            f"made with {stored or 'the defaults'} ({splits.info['split']}). Compute a table with "
            "these options (dataset: features with source and options, without path), or drop them"
        )
    return splits
