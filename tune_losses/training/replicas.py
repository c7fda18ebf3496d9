"""K replicas of one training setup that differ only in seed: trained as one vectorised model when the model
allows it (parameters stacked with ``torch.func.stack_module_state``, the forward and the loss ``vmap``-ed), or
as a plain loop otherwise. Either way each replica has its own initialisation, its own shuffling and its own
random stream (``Streams``: dropout and every other random op of its model), all derived from its seed, so
replica k of K gets the result of the same seed trained alone: bit for bit in the loop, within float tolerance
when vectorised (batched kernels round differently).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from tune_losses.data import Split
from tune_losses.models import split_output

from .metrics import confusion_matrix

EVAL_BATCH = 1024
# Stacked parameters of at least this many elements are laid out as their gradients come (``_match_grad_layout``);
# smaller ones keep stack_module_state's layout (their copy costs microseconds), and with it the batched kernels'
# rounding closest to a replica trained alone.
RELAYOUT_MIN = 1 << 16


def vectorizable(model: nn.Module) -> bool:
    """Whether ``VectorReplicas`` can train the model: plain ``nn.Dropout`` (replaced by ``ReplicaDropout``) and
    batch norm with a momentum (its running statistics stacked like the parameters) vmap; other random modules
    (Dropout2d, AlphaDropout, ...), batch norm with a cumulative average (momentum=None) or synchronised
    across processes do not, and take the loop. A random op called in a model's ``forward`` itself (not through
    a module) makes vmap raise "called random operation": set ``vectorize: false`` for such a model."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and type(m) is not nn.Dropout:
            return False
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.momentum is None or isinstance(m, nn.SyncBatchNorm)):
            return False
    return True


def make_optimizer(params, cfg):
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Streams:
    """Each replica's own random stream: the state of the global CPU generator (and of the device's CUDA one)
    right after ``torch.manual_seed(seed)`` and the replica's initialisation, i.e. what a run of that seed alone
    would go on drawing from. ``with streams.use(k):`` makes replica k's stream the global one (dropout and any
    random op draw from it), then stores where it got to and puts the caller's global state back."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.index = (device.index if device.index is not None else torch.cuda.current_device()) if self.cuda else None
        self.states: list[dict] = []

    def _get(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.index or 0)
        return state

    def _set(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if self.cuda and "cuda" in state:  # a checkpoint written on CPU has no CUDA stream: that one stays
            torch.cuda.set_rng_state(state["cuda"], self.index or 0)

    def state_dict(self) -> list[dict]:
        return [dict(s) for s in self.states]

    def capture(self) -> None:
        """Take the current global state as the next replica's stream."""
        self.states.append(self._get())

    @contextmanager
    def use(self, k: int):
        saved = self._get()
        self._set(self.states[k])
        try:
            yield
        finally:
            self.states[k] = self._get()
            self._set(saved)


def _dropout_noise(x: torch.Tensor, p: float) -> torch.Tensor:
    """The noise F.dropout draws for x from the global generator, so that x * noise is its output: on CPU
    ``empty_like(x).bernoulli_(1 - p).div_(1 - p)`` (ATen's _dropout_impl), on CUDA the mask of the fused
    ``native_dropout`` kernel (which draws differently) scaled by 1 / (1 - p)."""
    if x.is_cuda:
        return torch.native_dropout(x, p, True)[1].to(x.dtype) * (1.0 / (1.0 - p))
    return torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)


class _ReplicaNoise(torch.autograd.Function):
    """Dropout noise for vmap-ed replicas: under vmap each replica's slice is drawn from that replica's own
    stream (``randomness="different"`` would draw all of them from the one global stream)."""

    generate_vmap_rule = False

    @staticmethod
    def forward(x, p, streams):
        return _dropout_noise(x, p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output)

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the noise is not differentiable
        return None, None, None

    @staticmethod
    def vmap(info, in_dims, x, p, streams):
        x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(info.batch_size, *x.shape)
        noise = []
        for k in range(x.shape[0]):
            with streams.use(k):
                noise.append(_dropout_noise(x[k], p))
        return torch.stack(noise), 0


class ReplicaDropout(nn.Dropout):
    """``nn.Dropout`` of the vectorised replicas: the same output as F.dropout in each replica's own stream."""

    def __init__(self, p: float, streams: Streams):
        super().__init__(p)
        self.streams = streams

    def forward(self, x):
        if not self.training or self.p == 0 or x.numel() == 0:  # F.dropout draws nothing then either
            return x
        if self.p == 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        return x * _ReplicaNoise.apply(x.detach(), self.p, self.streams)


class Replicas:
    """Common driver: one epoch over shuffled mini-batches, per-replica losses and training confusion.
    ``build_loss``: one builder for every replica, or a list of one per replica (a fused group of configs gives
    each replica its config's loss parameters: training/group.py)."""

    def __init__(self, build_model, build_loss, seeds, optimizer_cfg, num_classes, device):
        self.seeds, self.num_classes, self.device = list(seeds), num_classes, device
        self.models, self.losses, self.streams = [], [], Streams(device)
        builders = list(build_loss) if isinstance(build_loss, (list, tuple)) else [build_loss] * len(self.seeds)
        if len(builders) != len(self.seeds):
            raise ValueError(f"build_loss: {len(builders)} builders is not allowed for {len(self.seeds)} seeds")
        built: dict[int, tuple[nn.Module, dict]] = {}  # seed -> its initial model and stream
        for seed, make_loss in zip(self.seeds, builders):
            if seed in built:  # a fused group's configs share seeds: the same initialisation, built once
                model, stream = built[seed]
                self.models.append(copy.deepcopy(model))
                self.streams.states.append(dict(stream))
            else:
                torch.manual_seed(seed)
                self.models.append(build_model().to(device))
                self.streams.capture()
                built[seed] = (self.models[-1], self.streams.states[-1])
            self.losses.append(make_loss().to(device))
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
            x, y = split.batch(perms[:, start : start + batch_size])  # (K, B, ...), (K, B)
            x, y = x.to(self.device), y.to(self.device)
            loss_values, predictions = self.step(x, y)
            total += loss_values.detach().double().cpu() * y.shape[1]
            confusion += confusion_matrix(y, predictions, self.num_classes).cpu()
        return total / n, confusion

    def load_streams(self, state) -> None:
        if "streams" in state:  # checkpoints written before replicas had their own streams have none
            self.streams.states = [dict(s) for s in state["streams"]]

    def map_param(self, state: dict, name: str, fn) -> dict:
        """A copy of ``state`` (from :meth:`state_dict`) with parameter ``name`` of every replica, and its optimizer
        state of the same rank (momentum, Adam's moments), replaced by ``fn`` of it (rowspace.py uses it)."""
        raise NotImplementedError  # pragma: no cover

    @staticmethod
    def _map_optimizer(opt_state: dict, index: int, fn) -> dict:
        entry = opt_state["state"].get(index)
        if entry is None:
            return opt_state
        entry = {k: fn(v) if torch.is_tensor(v) and v.dim() >= 2 else v for k, v in entry.items()}
        return {**opt_state, "state": {**opt_state["state"], index: entry}}

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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step of every replica on its batch: (loss per replica, predicted classes)."""
        raise NotImplementedError

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes (K, B) of a batch, in eval mode."""
        raise NotImplementedError


class LoopReplicas(Replicas):
    """Each replica its own module and optimizer, stepped one after the other."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizers = [make_optimizer(m.parameters(), self.optimizer_cfg) for m in self.models]

    def step(self, x, y):
        values, preds = [], []
        for k, (model, loss, opt, xk, yk) in enumerate(zip(self.models, self.losses, self.optimizers, x, y)):
            model.train()
            with self.streams.use(k):
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

    def map_param(self, state, name, fn):
        index = [n for n, _ in self.models[0].named_parameters()].index(name)
        return {
            **state,
            "models": [{**m, name: fn(m[name])} for m in state["models"]],
            "optimizers": [self._map_optimizer(o, index, fn) for o in state["optimizers"]],
        }

    def predict_batch(self, x):
        preds = []
        for model in self.models:
            model.eval()
            preds.append(split_output(model(x))[0].argmax(dim=1))
        return torch.stack(preds)

    def state_dict(self):
        return {
            "models": [m.state_dict() for m in self.models],
            "losses": [lo.state_dict() for lo in self.losses],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "generators": [g.get_state() for g in self.generators],
            "streams": self.streams.state_dict(),
        }

    def load_state_dict(self, state):
        self.load_streams(state)
        for m, s in zip(self.models, state["models"]):
            m.load_state_dict(s)
        for lo, s in zip(self.losses, state["losses"]):
            lo.load_state_dict(s)
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)


class VectorReplicas(Replicas):
    """All replicas as one stacked model: one vmap-ed forward, one backward, one optimizer step. Batch norm's
    running statistics are stacked buffers updated in place under vmap; dropout draws each replica's noise from
    its own stream (``ReplicaDropout``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params, self.buffers = stack_module_state(self.models)
        self.base = copy.deepcopy(self.models[0]).to("meta")
        for name, m in list(self.base.named_modules()):
            if type(m) is nn.Dropout:  # the same dropout, each replica's noise from its own stream
                parent, _, child = name.rpartition(".")
                setattr(self.base.get_submodule(parent), child, ReplicaDropout(m.p, self.streams))
        self.loss_base = self.losses[0]
        self._stack_loss_buffers()
        self.optimizer = make_optimizer(list(self.params.values()), self.optimizer_cfg)
        self._laid_out = False  # parameters in their gradients' layout (``_match_grad_layout``, first step)
        self.models = None  # type: ignore[assignment]  # the stacked tensors are the state from here on

    def _stack_loss_buffers(self):
        """The losses' buffers for the vmap-ed call: stacked (one per replica, ``loss_dims`` 0) where they differ
        between replicas (DAL's soft labels after an update, the loss parameters of a fused group), the one
        tensor (``loss_dims`` None) where every replica holds the same, so that the loss takes the path of a
        single config there (losses/base.py: ``param_value``)."""
        self.loss_buffers, self.loss_dims = {}, {}
        for name, first in self.loss_base.named_buffers():
            values = [dict(lo.named_buffers())[name] for lo in self.losses]
            same = all(torch.equal(v, first) for v in values[1:])
            self.loss_buffers[name] = first if same else torch.stack(values)
            self.loss_dims[name] = None if same else 0

    def _forward(self, x, params=None, buffers=None):
        def one(params, buffers, xk):
            return functional_call(self.base, (params, buffers), (xk,))

        params = self.params if params is None else params
        try:
            return torch.vmap(one)(params, self.buffers if buffers is None else buffers, x)
        except RuntimeError as exc:
            if "random operation" not in str(exc):
                raise
            raise ValueError(
                f"vectorize=True is not allowed for model {type(self.base).__name__}: its forward draws "
                "random numbers outside nn.Dropout, which vmap cannot give each replica from its own "
                "stream; set vectorize: false"
            ) from None

    def _loss(self, x, y, params=None, buffers=None):
        """(loss per replica, logits) of a training batch."""
        self.base.train()
        logits, attention = split_output(self._forward(x, params, buffers))

        def one(buffers, lg, t, att):
            return functional_call(self.loss_base, buffers, (lg, t), {"attention": att, "validate": False})

        in_dims = (self.loss_dims, 0, 0, 0 if attention is not None else None)
        return torch.vmap(one, in_dims=in_dims)(self.loss_buffers, logits, y, attention), logits

    def _match_grad_layout(self, x, y) -> None:
        """Lay each stacked parameter (and its optimizer state) out in memory as its gradient comes out of the
        vmap-ed backward, found by one probe on copies: e.g. a linear layer's weight gradient (K, H, D) is the
        transpose of a contiguous (K, D, H). Autograd then hands each gradient to its parameter instead of
        copying it into the parameter's layout every step (AccumulateGrad's layout contract); that copy was
        half of the DAL head's vectorised full-D step (``RELAYOUT_MIN``: large parameters only). Values are
        unchanged: the same numbers, other strides (the batched kernels then round differently, within float
        tolerance); the probe draws from copies of the replicas' streams and updates copies of their buffers."""
        self._laid_out = True
        if all(p.numel() < RELAYOUT_MIN for p in self.params.values()):
            return
        params = {n: p.detach().clone().requires_grad_() for n, p in self.params.items()}
        buffers = {n: b.clone() for n, b in self.buffers.items()}
        saved = self.streams.state_dict()
        try:
            values, _ = self._loss(x, y, params, buffers)
            grads = torch.autograd.grad(values.sum(), list(params.values()), allow_unused=True)
        finally:
            self.streams.states = saved
        with torch.no_grad():
            for p, g in zip(self.params.values(), grads):
                if g is None or g.shape != p.shape or g.stride() == p.stride() or p.numel() < RELAYOUT_MIN:
                    continue
                layout = torch.empty_like(g, dtype=p.dtype)  # g's strides where g is dense, else contiguous
                for t in [p, *(v for v in self.optimizer.state.get(p, {}).values() if torch.is_tensor(v))]:
                    if t.shape == p.shape and t.stride() != layout.stride():
                        new = torch.empty_like(layout, dtype=t.dtype).copy_(t)
                        t.set_(new.untyped_storage(), 0, new.shape, new.stride())

    def step(self, x, y):
        if not self._laid_out:
            self._match_grad_layout(x, y)
        values, logits = self._loss(x, y)
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

    def map_param(self, state, name, fn):
        index = list(self.params).index(name)
        return {
            **state,
            "params": {**state["params"], name: fn(state["params"][name])},
            "optimizer": self._map_optimizer(state["optimizer"], index, fn),
        }

    def predict_batch(self, x):
        self.base.eval()
        xk = x.expand(self.k, *x.shape)
        return split_output(self._forward(xk))[0].argmax(dim=-1)

    def state_dict(self):
        return {
            "params": {k: v.detach() for k, v in self.params.items()},
            "buffers": dict(self.buffers),
            "losses": [lo.state_dict() for lo in self.losses],
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "streams": self.streams.state_dict(),
        }

    def load_state_dict(self, state):
        self.load_streams(state)
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
