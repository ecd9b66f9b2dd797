"""Build/load the raymarcher's CUDA extension with ``torch.utils.cpp_extension`` (JIT with an on-disk cache).

The build directory defaults to ``~/.cache/ava256/kernels/<torch version>`` (override with
``AVA256_KERNELS_BUILD_DIR``); ninja rebuilds only when a source changed, so after the first build (or
``python -m ava256.kernels.build``) loading takes about a second. The target architecture follows
``TORCH_CUDA_ARCH_LIST`` when set, else the GPUs present (sm_90 on H100/H200).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

_EXT_NAME = "ava256_raymarch"
_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("raymarch.cpp", "raymarch_kernel.cu")
_module: ModuleType | None = None


def build_dir() -> Path:
    """Where the compiled extension is cached."""
    import torch

    env = os.environ.get("AVA256_KERNELS_BUILD_DIR")
    if env:
        return Path(env)
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}".replace("+", "_")
    return Path.home() / ".cache" / "ava256" / "kernels" / tag


def load_extension(verbose: bool = False) -> ModuleType:
    """Compile (if needed) and import the CUDA extension; cached for the process."""
    global _module
    if _module is not None:
        return _module
    import torch
    from torch.utils.cpp_extension import load

    if not torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        raise RuntimeError(
            "the CUDA raymarcher needs a CUDA device (or TORCH_CUDA_ARCH_LIST to build without one); "
            "use backend='reference' on CPU"
        )
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    log.info("loading CUDA raymarcher from %s (builds on first use)", out)
    _module = load(
        name=_EXT_NAME,
        sources=[str(_CSRC / s) for s in _SOURCES],
        extra_include_paths=[str(_CSRC)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=str(out),
        verbose=verbose,
    )
    return _module
