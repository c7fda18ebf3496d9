"""The common base of every loss: input checks and the (logits, target[, attention]) call."""

from __future__ import annotations

import torch
from torch import nn

from tune_losses._internals import is_batched


def require(ok: bool, param: str, value, allowed: str) -> None:
    """Raise a ValueError naming the parameter, the value given and what is allowed."""
    if not ok:
        raise ValueError(f"{param}={value!r} is not allowed: {param} must be {allowed}")


def param_buffer(value: float) -> torch.Tensor:
    """A float parameter of a loss as what it registers as a non-persistent buffer (float64, so its value is the
    float given): one number per loss, stacked into one per replica by the vectorised replicas, so that the configs
    of a fused group (training/group.py), differing only in such parameters, train as one vmap-ed model. Not in
    ``state_dict`` (the config gives it), so checkpoints keep their form."""
    return torch.tensor(float(value), dtype=torch.float64)


def param_value(param: torch.Tensor) -> float | torch.Tensor:
    """A loss parameter as a Python float where one value holds for the whole call, so that shortcuts (gamma = 0:
    exactly cross-entropy) and scalar arithmetic stay those of a single config; the tensor itself where it differs
    by replica (batched under vmap: a fused group of configs), which the fused kernels and the tensor expressions
    take per replica (_internals.is_batched: functorch's private test of that, checked by tests/test_internals.py)."""
    return param if is_batched(param) else param.item()


def modulating_pow(base: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """``base ** gamma`` for a base in [0, 1] (focal's 1 - p_t, beta/gamma's 1 - p_t^beta), with finite gradients.

    Where p_t rounds to 1 the base is 0, and for 0 < gamma < 1 the derivative gamma * base^(gamma - 1) is
    infinite there; times the zero derivative of the base, autograd gives NaN. The base is clamped at the dtype's
    smallest normal number, so that derivative stays finite (at most gamma / tiny) and the clamp passes no
    gradient below it. The value changes only where base < tiny, where the loss term (factor * log p_t, with
    |log p_t| about base) is below tiny itself.
    """
    return base.clamp(min=torch.finfo(base.dtype).tiny).pow(gamma)


class ClassificationLoss(nn.Module):
    """A loss over logits of shape (B, C) and integer targets of shape (B,), returning the batch mean.

    Subclasses implement :meth:`compute`, pure tensor math with no data-dependent Python control flow,
    so that it also runs under ``torch.vmap`` for vectorised repeats. :meth:`forward` checks the inputs
    first; the vectorised trainer checks its labels once and passes ``validate=False``.
    """

    needs_attention = False
    # Constructor parameters that may differ between the replicas of one vectorised model (a fused group of
    # configs, training/group.py): those held as ``param_buffer``s, or used only by ``update`` (which runs on each
    # replica's own loss). A plugin lists its own; a parameter not listed keeps its configs apart.
    replica_params: tuple[str, ...] = ()

    def __init__(self, num_classes: int):
        super().__init__()
        require(isinstance(num_classes, int) and num_classes >= 2, "num_classes", num_classes, "an integer >= 2")
        self.num_classes = num_classes

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        attention: torch.Tensor | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        if validate:
            self.check(logits, target, attention)
        return self.compute(logits, target, attention)

    def compute(self, logits, target, attention=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, confusion: torch.Tensor) -> None:
        """Called once per epoch with that epoch's training confusion matrix; most losses ignore it."""

    def check(self, logits: torch.Tensor, target: torch.Tensor, attention: torch.Tensor | None) -> None:
        require(logits.dim() == 2, "logits.shape", tuple(logits.shape), "(batch, num_classes)")
        require(
            logits.shape[1] == self.num_classes, "logits.shape[1]", logits.shape[1], f"num_classes={self.num_classes}"
        )
        require(target.shape == logits.shape[:1], "target.shape", tuple(target.shape), f"({logits.shape[0]},)")
        require(not target.is_floating_point(), "target.dtype", target.dtype, "an integer dtype")
        if target.numel():
            lo, hi = int(target.min()), int(target.max())
            require(
                lo >= 0 and hi < self.num_classes,
                "target",
                f"values in [{lo}, {hi}]",
                f"class indices in [0, {self.num_classes - 1}]",
            )
        if self.needs_attention:
            require(
                attention is not None,
                "attention",
                None,
                "the channel-attention vectors (B, channels) of a model with CAM",
            )
            assert attention is not None  # require raised otherwise
            require(
                attention.dim() == 2 and attention.shape[0] == logits.shape[0],
                "attention.shape",
                tuple(attention.shape),
                f"({logits.shape[0]}, channels)",
            )
