"""In-memory train / validation / test splits with a fixed seed, and the split rules the papers use."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Split:
    x: torch.Tensor  # float (N, ...) or uint8 images (N, C, H, W), scaled to [0, 1] by batch()
    y: torch.Tensor  # int64 (N,)

    def __len__(self):
        return len(self.y)

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[index]
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x), self.y[index]


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def stratified_indices(y: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices class by class in the given fractions (the last part takes the remainder)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def limit_per_class(y: np.ndarray, index: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    if per_class is None or len(index) == 0:
        return index
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(index[y[index] == c])[:per_class] for c in np.unique(y[index])]
    return np.sort(np.concatenate(keep))


def _validation_rule(val_fraction: float, of: str) -> str:
    if val_fraction == 0:
        return f"validation: none (val_fraction 0), the model trains on all of {of}"
    return f"validation: {val_fraction:g} of {of}, stratified, held out of training"


def make_splits(
    x,
    y,
    *,
    seed: int,
    split: str = "ratios",
    ratios=(0.6, 0.2, 0.2),
    test=None,
    val_fraction: float | None = None,
    max_per_class: int | None = None,
    class_names=None,
    info=None,
) -> Splits:
    """Build splits from arrays. ``test=(x_test, y_test)`` keeps an official test set (whatever ``split`` says;
    validation is ``val_fraction`` of the official training set); otherwise ``split='ratios'`` (train / val /
    test fractions, stratified; no ``val_fraction``) or ``split='half'`` (per class half train / half test, as
    in the DAL paper; validation is ``val_fraction`` of the training half). ``val_fraction`` defaults to 0.2;
    0 holds out nothing: the model then trains on the whole training part and the validation split is empty.
    ``info['split']`` says in words which rule made the splits."""
    if val_fraction is not None and test is None and split == "ratios":
        raise ValueError(
            f"val_fraction={val_fraction!r} is not allowed with split='ratios', whose ratios "
            f"{list(ratios)} give the validation part: use split='half' (per class half train / half "
            "test, validation val_fraction of the training half) or set ratios"
        )
    val_fraction = 0.2 if val_fraction is None else val_fraction
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(
            f"val_fraction={val_fraction!r} is not allowed: val_fraction must be a number in [0, 1) "
            "(0: no validation split, the model trains on the whole training part)"
        )
    x, y = torch.as_tensor(x), torch.as_tensor(np.asarray(y), dtype=torch.long)
    y_np = y.numpy()
    if test is not None:
        tr, va = stratified_indices(y_np, [1 - val_fraction, val_fraction], seed)
        x_te, y_te = torch.as_tensor(test[0]), torch.as_tensor(np.asarray(test[1]), dtype=torch.long)
        te_index = limit_per_class(y_te.numpy(), np.arange(len(y_te)), max_per_class, seed)
        test_split = Split(x_te[te_index], y_te[te_index])
        rule = f"the data set's own train / test split ({len(y)} / {len(y_te)} images); " + _validation_rule(
            val_fraction, "the official training set"
        )
    else:
        if split == "half":
            train_half, te = stratified_indices(y_np, [0.5, 0.5], seed)
            sub = stratified_indices(y_np[train_half], [1 - val_fraction, val_fraction], seed + 1)
            tr, va = train_half[sub[0]], train_half[sub[1]]
            rule = "per class half train / half test (the DAL paper's split); " + _validation_rule(
                val_fraction, "the training half"
            )
        elif split == "ratios":
            if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6 or min(ratios) <= 0:
                raise ValueError(
                    f"ratios={list(ratios)} is not allowed: ratios must be three positive "
                    "fractions (train, val, test) that sum to 1"
                )
            tr, va, te = stratified_indices(y_np, list(ratios), seed)
            rule = f"stratified train / validation / test fractions {'/'.join(f'{r:g}' for r in ratios)}"
        else:
            raise ValueError(f"split={split!r} is not allowed: split must be 'ratios' or 'half'")
        te = limit_per_class(y_np, te, max_per_class, seed)
        test_split = Split(x[te], y[te])
    tr = limit_per_class(y_np, tr, max_per_class, seed)
    va = limit_per_class(y_np, va, max_per_class and max(1, max_per_class // 4), seed)
    if max_per_class is not None:
        rule += f"; at most {max_per_class} images per class (validation {max(1, max_per_class // 4)})"
    num_classes = int(max(y.max(), test_split.y.max())) + 1
    return Splits(
        Split(x[tr], y[tr]),
        Split(x[va], y[va]),
        test_split,
        num_classes,
        list(class_names or range(num_classes)),  # type: ignore[arg-type]  # unnamed classes keep their index
        {**(info or {}), "split": rule},
    )


def describe(splits: Splits) -> dict[str, str]:
    """The split's sizes and rule, as a sweep's parent run records them (params ``data.*``)."""
    return {
        "data.n_train": str(len(splits.train)),
        "data.n_val": str(len(splits.val)),
        "data.n_test": str(len(splits.test)),
        "data.split": str(splits.info.get("split", "not recorded")),
    }
