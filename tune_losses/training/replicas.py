"""K replicas of one training setup that differ only in seed: trained as one vectorised model when the model
allows it (parameters stacked with ``torch.func.stack_module_state``, the forward and the loss ``vmap``-ed), or
as a plain loop otherwise. Either way each replica sees its own initialisation and its own shuffling, so a
replica trained vectorised gets the result of the same seed trained alone (within float tolerance).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from tune_losses.data import Split
from tune_losses.models import split_output

from .metrics import confusion_matrix

EVAL_BATCH = 1024
_NOT_VMAPPABLE = (nn.modules.batchnorm._BatchNorm, nn.Dropout)


def vectorizable(model: nn.Module) -> bool:
    return not any(isinstance(m, _NOT_VMAPPABLE) for m in model.modules())


def make_optimizer(params, cfg):
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Replicas:
    """Common driver: one epoch over shuffled mini-batches, per-replica losses and training confusion."""

    def __init__(self, build_model, build_loss, seeds, optimizer_cfg, num_classes, device):
        self.seeds, self.num_classes, self.device = list(seeds), num_classes, device
        self.models, self.losses = [], []
        for seed in self.seeds:
            torch.manual_seed(seed)
            self.models.append(build_model().to(device))
            self.losses.append(build_loss().to(device))
        self.generators = [torch.Generator().manual_seed(seed) for seed in self.seeds]
        self.optimizer_cfg, self.build_model = optimizer_cfg, build_model

    @property
    def k(self) -> int:
        return len(self.seeds)

    def train_epoch(self, split: Split, batch_size: int):
        n = len(split)
        perms = torch.stack([torch.randperm(n, generator=g) for g in self.generators])  # (K, N)
        total = torch.zeros(self.k, dtype=torch.float64)
        confusion = torch.zeros(self.k, self.num_classes, self.num_classes, dtype=torch.long)
        for start in range(0, n, batch_size):
            x, y = split.batch(perms[:, start:start + batch_size])  # (K, B, ...), (K, B)
            x, y = x.to(self.device), y.to(self.device)
            loss_values, predictions = self.step(x, y)
            total += loss_values.detach().double().cpu() * y.shape[1]
            confusion += confusion_matrix(y, predictions, self.num_classes).cpu()
        return total / n, confusion

    def update_losses(self, confusions) -> None:
        for loss, conf in zip(self.losses, confusions):
            loss.update(conf)

    @torch.no_grad()
    def predict(self, split: Split) -> torch.Tensor:
        """Predicted classes (K, N) in eval mode."""
        out = []
        for start in range(0, len(split), EVAL_BATCH):
            x, _ = split.batch(slice(start, start + EVAL_BATCH))
            out.append(self.predict_batch(x.to(self.device)).cpu())
        return torch.cat(out, dim=1)


class LoopReplicas(Replicas):
    """Each replica its own module and optimizer, stepped one after the other."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizers = [make_optimizer(m.parameters(), self.optimizer_cfg) for m in self.models]

    def step(self, x, y):
        values, preds = [], []
        for model, loss, opt, xk, yk in zip(self.models, self.losses, self.optimizers, x, y):
            model.train()
            logits, attention = split_output(model(xk))
            value = loss(logits, yk, attention=attention)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            values.append(value.detach())
            preds.append(logits.detach().argmax(dim=1))
        return torch.stack(values), torch.stack(preds)

    def module(self, k: int = 0) -> nn.Module:
        return self.models[k]

    def predict_batch(self, x):
        preds = []
        for model in self.models:
            model.eval()
            preds.append(split_output(model(x))[0].argmax(dim=1))
        return torch.stack(preds)

    def state_dict(self):
        return {"models": [m.state_dict() for m in self.models], "losses": [lo.state_dict() for lo in self.losses],
                "optimizers": [o.state_dict() for o in self.optimizers],
                "generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state):
        for m, s in zip(self.models, state["models"]):
            m.load_state_dict(s)
        for lo, s in zip(self.losses, state["losses"]):
            lo.load_state_dict(s)
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)


class VectorReplicas(Replicas):
    """All replicas as one stacked model: one vmap-ed forward, one backward, one optimizer step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params, self.buffers = stack_module_state(self.models)
        self.base = copy.deepcopy(self.models[0]).to("meta")
        self.loss_base = self.losses[0]
        self._stack_loss_buffers()
        self.optimizer = make_optimizer(list(self.params.values()), self.optimizer_cfg)
        self.models = None  # the stacked tensors are the state from here on

    def _stack_loss_buffers(self):
        names = [n for n, _ in self.loss_base.named_buffers()]
        self.loss_buffers = {n: torch.stack([dict(lo.named_buffers())[n] for lo in self.losses]) for n in names}

    def _forward(self, x):
        def one(params, buffers, xk):
            return functional_call(self.base, (params, buffers), (xk,))

        return torch.vmap(one)(self.params, self.buffers, x)

    def step(self, x, y):
        logits, attention = split_output(self._forward(x))

        def one(buffers, lg, t, att):
            return functional_call(self.loss_base, buffers, (lg, t), {"attention": att, "validate": False})

        in_dims = (0, 0, 0, 0 if attention is not None else None)
        values = torch.vmap(one, in_dims=in_dims)(self.loss_buffers, logits, y, attention)
        self.optimizer.zero_grad(set_to_none=True)
        values.sum().backward()  # replicas share no parameters, so each gets its own gradient
        self.optimizer.step()
        return values.detach(), logits.detach().argmax(dim=-1)

    def update_losses(self, confusions):
        super().update_losses(confusions)
        self._stack_loss_buffers()

    def module(self, k: int = 0) -> nn.Module:
        """Replica k as a plain module (e.g. to log or export it)."""
        model = self.build_model().to(self.device)
        state = {n: v[k].detach() for n, v in {**self.params, **self.buffers}.items()}
        model.load_state_dict(state)
        return model

    def predict_batch(self, x):
        xk = x.expand(self.k, *x.shape)
        return split_output(self._forward(xk))[0].argmax(dim=-1)

    def state_dict(self):
        return {"params": {k: v.detach() for k, v in self.params.items()}, "buffers": dict(self.buffers),
                "losses": [lo.state_dict() for lo in self.losses], "optimizer": self.optimizer.state_dict(),
                "generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state):
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
            for k, v in state["buffers"].items():
                self.buffers[k].copy_(v)
        for lo, s in zip(self.losses, state["losses"]):
            lo.load_state_dict(s)
        self._stack_loss_buffers()
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)


def make_replicas(build_model, build_loss, seeds, optimizer_cfg, num_classes, device, vectorize=True):
    probe = build_model()
    cls = VectorReplicas if vectorize and len(seeds) > 1 and vectorizable(probe) else LoopReplicas
    return cls(build_model, build_loss, seeds, optimizer_cfg, num_classes, device)
