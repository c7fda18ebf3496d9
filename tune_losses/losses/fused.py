"""Fused CPU forward+backward of DAL, beta/gamma and CC-Loss (csrc/fused.cpp), built with PyTorch's C++
extension tools as PyTorch operators.

Why: on CPU, at the batch sizes of this field, a loss costs PyTorch's per-operator overhead, not arithmetic.
Cross-entropy is two fused kernels; DAL and beta/gamma as tensor expressions are five to nine operators with
as many autograd nodes (benchmarks/losses.py: 1.6-2.8x CE), CC-Loss about twenty. The fused versions are one
autograd node each.

The extension is compiled on first use (BUILD_SECONDS, once per machine, source and torch version) into
``<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions>/tune_losses_fused_<hash>``, the hash of the C++ source, the
compiler flags, the torch and Python versions, from a copy of the source kept there (ninja rebuilds when the
source's path changes): two checkouts or versions never rebuild each other's build, and the same source, from any
checkout, finds its build again. One line on stderr says when a build starts; ``make`` builds it at set-up
and the Docker image at image build time (``fused.build()``).
It defines the operators ``torch.ops.tune_losses.dal_loss``, ``beta_gamma_loss`` and ``cc_loss``
(``TORCH_LIBRARY``, with CPU and autograd kernels in C++); this module gives them, with the public
``torch.library`` API, a vmap rule (``register_vmap``: the replicas become leading dimensions, one mean per
replica, so the vectorised repeats under ``torch.func.vmap`` run the fused kernels too) and a fake kernel
(``register_fake``). They are used for float32/float64 CPU tensors; everything else (CUDA, half precision)
takes the tensor-expression version in the loss module, which computes the same values. Where no C++ compiler
is available (one warning), or with ``TUNE_LOSSES_FUSED=0``, the tensor-expression version is used everywhere.
The fused gradient is differentiable once: ``create_graph=True`` raises an error that says so, and so do the
other ``torch.func`` transforms (``grad``, ``jacrev``, ...); set ``TUNE_LOSSES_FUSED=0`` for those.
(``torch.library.custom_op`` with ``register_autograd`` is the all-Python way; tried, its Python autograd and
dispatch per call cost more than the kernel itself at these batch sizes.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from tune_losses.atomic import replacing

SOURCE = Path(__file__).with_name("csrc") / "fused.cpp"
CFLAGS = ["-O3", "-fopenmp-simd"]
#: measured: `time TORCH_EXTENSIONS_DIR=$(mktemp -d) python -c "from tune_losses.losses import fused; fused.build()"`
#: on the 2-core development machine: 63 s wall (34 s of CPU, the machine shared with other work)
BUILD_SECONDS = "~1 min"
FLOAT_TYPES = (torch.float32, torch.float64)
_lock = threading.Lock()
_kernels = None
_resolved = False  # the build was tried (or TUNE_LOSSES_FUSED=0 read): decided once per process


def enabled() -> bool:
    return os.environ.get("TUNE_LOSSES_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def build_name(source: Path = SOURCE) -> str:
    """The extension's name: keyed by what makes its binary (source, flags, torch and Python versions)."""
    key = hashlib.sha256(source.read_bytes())
    key.update(repr((CFLAGS, torch.__version__, sys.version_info[:2])).encode())
    return f"tune_losses_fused_{key.hexdigest()[:16]}"


def build_dir(source: Path = SOURCE) -> Path:
    """Where that extension is built and found again (PyTorch's TORCH_EXTENSIONS_DIR, or its default root)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / build_name(source)


def is_built(source: Path = SOURCE) -> bool:
    return (build_dir(source) / f"{build_name(source)}.so").is_file()


def build_notice() -> str | None:
    """The line to show while the kernels build on this machine, or None when they are built (or disabled): a
    first trial otherwise waits that long with nothing on screen (a driver may print it, as its trials' output
    does not reach the console at the default verbosity)."""
    if not enabled() or is_built():
        return None
    return f"building the fused loss kernels, once, {BUILD_SECONDS} (into {build_dir()})"


def _build():
    directory = build_dir()
    if notice := build_notice():
        print(notice, file=sys.stderr, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("torch.utils.cpp_extension")
    level, path = log.level, os.environ.get("PATH", "")
    log.setLevel(logging.ERROR)  # its "No CUDA runtime is found" on CPU machines
    try:
        import ninja  # the build tool PyTorch drives; the PyPI package puts its binary beside the interpreter

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    try:
        from torch.utils.cpp_extension import load

        source = str(_source_copy(directory))
        module = load(build_name(), [source], extra_cflags=CFLAGS, build_directory=str(directory), verbose=False)
    finally:
        os.environ["PATH"] = path
        log.setLevel(level)
    return _operators(module)


def _source_copy(directory: Path) -> Path:
    """The source inside its build directory (written once, atomically; the directory's name is its hash), so that
    every checkout builds from one path and finds the build up to date."""
    copy = directory / SOURCE.name
    if not copy.is_file() or copy.read_bytes() != SOURCE.read_bytes():
        with replacing(copy) as staged:
            shutil.copyfile(SOURCE, staged)
    return copy


def _replicas_leading(info, in_dims, *args):
    """vmap rule: the batch dimension first in every tensor (unbatched ones expanded), as the kernels take it."""
    return tuple(
        a
        if d is None and not isinstance(a, Tensor)
        else a.movedim(d, 0)
        if d is not None
        else a.expand(info.batch_size, *a.shape)
        for a, d in zip(args, in_dims)
    )


def _vmap_rule(op, outputs: int):
    def rule(info, in_dims, *args):
        return op(*_replicas_leading(info, in_dims, *args)), (0,) * outputs

    return rule


def _fake(*like):
    """A fake kernel (shapes only, for torch.compile): the loss per replica, then gradients shaped like inputs."""

    def fake(logits, *args):
        inputs = (logits, *args)
        return (logits.new_empty(logits.shape[:-2]), *(torch.empty_like(inputs[i]) for i in like))

    return fake


def _operators(module):
    """The extension, its operators (``torch.ops.tune_losses.dal_loss``, ``beta_gamma_loss``, ``cc_loss``: CPU
    and autograd kernels in C++; each returns the loss, then its gradients) given their vmap and fake rules. The
    module's functions of the same names return the loss alone."""
    ops = torch.ops.tune_losses
    for op, outputs, like in (
        (ops.dal_loss.default, 2, (0,)),
        (ops.beta_gamma_loss.default, 2, (0,)),
        (ops.cc_loss.default, 3, (0, 2)),
    ):
        torch.library.register_vmap(op, _vmap_rule(op, outputs))
        torch.library.register_fake(op, _fake(*like))
    return module


def kernels():
    """The fused losses (``dal_loss``, ``beta_gamma_loss``, ``cc_loss``, each returning the batch mean), or None
    (disabled, or they could not be built: then warned once)."""
    global _kernels, _resolved
    if not _resolved:
        with _lock:
            if not _resolved:
                try:
                    _kernels = _build() if enabled() else None
                except Exception as exc:  # no compiler, no ninja, a failed build: same values, slower
                    lines = str(exc).strip().splitlines() or [repr(exc)]
                    reason = next((ln.strip() for ln in lines if "error" in ln.lower()), lines[-1])
                    warnings.warn(
                        f"tune_losses: the fused CPU loss kernels (DAL, beta/gamma, CC) could not be "
                        f"built ({reason}); using their tensor-expression versions (same values, "
                        f"slower on CPU)",
                        stacklevel=2,
                    )
                _resolved = True
    return _kernels


def build() -> str:
    """Build (or find) the kernels now and say where they are: ``make`` calls this at set-up."""
    module = kernels()
    return f"fused loss kernels: {module.__file__ if module else 'not available (tensor-expression losses)'}"


def usable(logits: torch.Tensor) -> bool:
    """Whether the fused kernels apply to these logits (called every step: kept cheap)."""
    return logits.is_cpu and logits.dtype in FLOAT_TYPES and (_kernels if _resolved else kernels()) is not None
