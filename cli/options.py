"""Option bundles shared by the commands, as decorators. Each keeps its flag names and defaults in one place;
the help text, where commands word it differently, is a parameter. Imports only click (keeps --help fast)."""
from __future__ import annotations

import click

CODECS = ["none", "zstd1", "zstd3", "blosc-lz4", "blosc-zstd"]  # embedx.store.CODECS (not imported: keeps --help fast)
DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def bundle(*decorators):
    """One decorator applying ``decorators`` so their options list in the order given."""
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


store_argument = click.argument("store")


def device_option(help: str = DEVICE_HELP):
    """--device (auto, cpu, cuda, cuda:N)."""
    return click.option("--device", default="auto", show_default=True, help=help)


def seed_option(help: str):
    """--seed, default 0."""
    return click.option("--seed", default=0, show_default=True, help=help)


def json_option(help: str = "Print the JSON result."):
    """--json (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def json_out_options(json_help: str = "Print the JSON result.", out_help: str = "Also write the JSON to FILE."):
    """--json and --out/-o FILE (the JSON also written to FILE)."""
    return bundle(json_option(json_help),
                  click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help=out_help))


def chunking_options(f):
    """--codec and --chunk-rows, shared by the commands that write stores."""
    return bundle(
        click.option("--codec", type=click.Choice(CODECS), default="none", show_default=True,
                     help="Chunk codec (default from bench/results/codec.md)."),
        click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
                     help="Rows per chunk, at most the row count [default: about 4 MiB]."),
    )(f)


def silhouette_options(silhouette_help: str, seed_help: str):
    """--silhouette exact|sample, --sample-size, --seed."""
    return bundle(
        click.option("--silhouette", "silhouette_mode", type=click.Choice(["exact", "sample"]), default="exact",
                     show_default=True, help=silhouette_help),
        click.option("--sample-size", default=2000, show_default=True, help="Points for --silhouette sample."),
        seed_option(seed_help),
    )


def cluster_option(what: str = "the passes"):
    """--cluster local[:N] | tcp://HOST:PORT (Dask; the extra embedx[dist])."""
    return click.option(
        "--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
        help=f"Run {what} on a Dask cluster: 'local' (a worker process per core) or 'local:N' starts one for this "
             f"command; tcp://HOST:PORT uses a running `dask scheduler` (its workers need embedx installed and "
             f"read the store themselves). Results equal the in-process ones to 1e-9. Needs embedx[dist].")
