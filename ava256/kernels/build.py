"""Ahead-of-time build of the CUDA raymarcher: ``python -m ava256.kernels.build [--verbose]``.

Compiles the extension into the cache directory (see :func:`ava256.kernels._build.build_dir`; set
``AVA256_KERNELS_BUILD_DIR`` to choose another, e.g. inside a container image) so that the first
``raymarch`` call does not pay the compile. Needs nvcc, ninja and a CUDA device (or ``TORCH_CUDA_ARCH_LIST``).
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands and output")
    args = parser.parse_args(argv)
    from ._build import build_dir, load_extension

    t0 = time.perf_counter()
    mod = load_extension(verbose=args.verbose)
    print(f"built/loaded {mod.__name__} in {time.perf_counter() - t0:.1f} s -> {build_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
