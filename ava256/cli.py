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


@cli.command("split")
@click.argument("store", type=click.Path(file_okay=False))
@click.option(
    "--protocol",
    required=True,
    type=click.Choice(["free-face", "holdout-20", "holdout-12", "cameras"]),
    help="free-face: hold out each capture's EXP_free_face frames (val = first half, test = second half); "
    "holdout-20 / holdout-12: hold out 20 / 12 subjects (a quarter val, the rest test); "
    "cameras: hold out ~10% of the dome cameras (half val, half test).",
)
@click.option("--seed", default=0, type=int, help="Seed of the held-out subject/camera choice.")
@click.option("--name", default=None, help="Split name (folder under STORE/_splits). [default: PROTOCOL or PROTOCOL-seedS]")
@click.option(
    "--held-out-cameras",
    default=None,
    type=click.IntRange(min=2),
    help="cameras protocol: how many cameras to hold out. [default: max(2, round(cameras / 10))]",
)
def split_cmd(store: str, protocol: str, seed: int, name: str | None, held_out_cameras: int | None) -> None:
    """Write deterministic train/val/test partitions of STORE's samples manifest to
    STORE/_splits/NAME/{train,val,test}.parquet (+ split.json). Invalid samples are excluded and counted."""
    from ava256.pipeline.split import run_split

    try:
        info = run_split(store, protocol, seed, name, held_out_cameras=held_out_cameras)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"split {info['name']} ({protocol}, seed {seed}) -> {info['path']}")
    click.echo(f"  {'part':<6}{'samples':>10}{'subjects':>10}{'captures':>10}{'cameras':>9}")
    for part in ("train", "val", "test"):
        click.echo(
            f"  {part:<6}{info['counts'][part]:>10}{info['subjects'][part]:>10}"
            f"{info['captures'][part]:>10}{info['cameras'][part]:>9}"
        )
    click.echo(f"  invalid samples excluded: {info['invalid_excluded']} of {info['samples']}")


# [cli:train] ------------------------------------------------------------------------------------------

# [cli:render] ------------------------------------------------------------------------------------------

# [cli:demo] ------------------------------------------------------------------------------------------


def main() -> None:
    cli(prog_name="ava256")


if __name__ == "__main__":
    main()
