"""Command line: argument parsing only; each command calls one library function (imported lazily so that
``ava256 --help`` stays fast and importing the CLI never needs a GPU)."""

from __future__ import annotations

import logging

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="ava256")
def cli(verbose: int) -> None:
    """AVA-256 toolkit: fetch -> repack -> split -> train -> render.

    Every stage reads and writes files (raw tree, Parquet manifests, Zarr stores), so each can be
    re-run, resumed after a crash, or run on a Dask cluster on its own.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- commands, one block per stage; each block sits under its marker ---------------------------------------

# [cli:synth] ------------------------------------------------------------------------------------------

# [cli:fetch] ------------------------------------------------------------------------------------------

# [cli:verify] ------------------------------------------------------------------------------------------

# [cli:repack] ------------------------------------------------------------------------------------------

# [cli:info] ------------------------------------------------------------------------------------------

# [cli:split] ------------------------------------------------------------------------------------------

# [cli:train] ------------------------------------------------------------------------------------------

# [cli:render] ------------------------------------------------------------------------------------------

# [cli:demo] ------------------------------------------------------------------------------------------


def main() -> None:
    cli(prog_name="ava256")


if __name__ == "__main__":
    main()
