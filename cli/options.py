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


def _verbosity(ctx, param, value):
    """-q / -v given before or after the subcommand: recorded in ``ctx.obj`` and applied to the logger at once."""
    if not value:
        return
    from embedx.cli.common import setup_logging

    obj = ctx.ensure_object(dict)
    obj[param.name] = True
    setup_logging(quiet=bool(obj.get("quiet")), verbose=bool(obj.get("verbose")))


def verbosity_options(f):
    """-q/--quiet and -v/--verbose on a command (they work before the subcommand too): quiet = warnings and errors
    only, no progress bars; verbose = debug logging. Not passed to the function (read ``ctx.obj``)."""
    return bundle(
        click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_verbosity,
                     help="Only warnings and errors on stderr; no progress bars."),
        click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_verbosity,
                     help="Debug logging on stderr."),
    )(f)


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean X?)`` for the choice nearest ``word`` (difflib's ratio, at least 0.6; case ignored), else
    ""."""
    import difflib

    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    near = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[near[0]]}?)" if near else ""


class NamesOption(click.Option):
    """Registered score names (``family``: "measure", "transfer"), comma-separated and/or the option repeated
    (``--metrics acs --metrics gap,iimm`` = all three, in that order, each once): the help lists them (read from
    the registry only when help is shown, which keeps start-up light) and an unknown name is refused with one line
    naming the nearest valid one and all of them, before any work. The value is a list of names, or None."""

    def __init__(self, *args, family: str, noun: str = "name", **kwargs):
        self.family, self.noun = family, noun
        kwargs.setdefault("metavar", "NAME[,NAME...]")
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def names(self) -> tuple[str, ...]:
        from embedx.engine import registry

        return tuple(registry.scores(self.family))

    def get_help_record(self, ctx):
        rec = super().get_help_record(ctx)
        if rec is None:
            return rec
        return rec[0], f"{rec[1]} Repeat the option to add more. Names: {', '.join(self.names())}."

    def process_value(self, ctx, value):
        value = super().process_value(ctx, value)
        if not value:
            return None
        if isinstance(value, str):
            value = (value,)
        names = list(dict.fromkeys(m.strip() for v in value for m in str(v).split(",") if m.strip()))
        valid = self.names()
        bad = [m for m in names if m not in valid]
        if bad:
            from embedx.errors import EmbedxError

            flag = next(o for o in self.opts if o.startswith("--"))
            raise EmbedxError(f"{flag}: unknown {self.noun} {', '.join(map(repr, bad))}{did_you_mean(bad[0], valid)};"
                              f" choose from {', '.join(valid)}")
        return names or None


class KindChoice(click.Choice):
    """``click.Choice`` of the registered kinds of ``family`` (``embedx.engine.kinds``: "source", "dump"), read from
    the registry only when a value is checked or help is shown (start-up stays light)."""

    def __init__(self, family: str):
        self.family, self.case_sensitive = family, True

    @property
    def choices(self) -> tuple[str, ...]:
        from embedx.engine import kinds

        return kinds.names(self.family)


class KindsOption(click.Option):
    """An option whose help comes from the kinds registry (read only when help is shown): ``kinds_help`` appends
    the family's kinds (``usage: summary``, one a line), or ``kind_option`` is the name of a keyword option of the
    family's kinds and the help is theirs (``KIND: help [default: ...]``), after the ``help`` given."""

    def __init__(self, *args, family: str, kind_option: str | None = None, **kwargs):
        self.family, self.kind_option = family, kind_option
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        from embedx.engine import kinds

        if self.kind_option is not None:
            extra = kinds.option_help(self.family, self.kind_option, "--from " if self.family == "dump" else "") + "."
        else:
            extra = " ".join(f"{k.usage}: {k.summary};" for k in kinds.kinds(self.family).values())[:-1] + "."
        given = self.help
        self.help = f"{given} {extra}" if given else extra
        try:
            return super().get_help_record(ctx)  # click adds [default: ...] / [required] after the whole text
        finally:
            self.help = given


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


def silhouette_options(silhouette_help: str, seed_help: str, default: str = "exact"):
    """--silhouette [auto|]exact|sample (auto offered where it is the ``default``), --sample-size, --seed."""
    modes = ["auto", "exact", "sample"] if default == "auto" else ["exact", "sample"]
    used = "--silhouette sample or auto" if default == "auto" else "--silhouette sample"
    return bundle(
        click.option("--silhouette", "silhouette_mode", type=click.Choice(modes), default=default,
                     show_default=True, help=silhouette_help),
        click.option("--sample-size", default=2000, show_default=True, help=f"Points for {used}."),
        seed_option(seed_help),
    )


def cluster_option(what: str = "the passes"):
    """--cluster local[:N] | tcp://HOST:PORT (Dask; the extra embedx[dist])."""
    return click.option(
        "--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
        help=f"Run {what} on a Dask cluster: 'local' (a worker process per core) or 'local:N' starts one for this "
             f"command; tcp://HOST:PORT uses a running `dask scheduler` (its workers need embedx installed and "
             f"read the store themselves). Results are the same bits as in-process. Needs embedx[dist].")
