"""The ``embedx`` command group: the lazily loaded command table, logging and error handling; nothing else.

Each command lives in its own module (``embedx.cli.<module>``), imported only when that command runs or
``--help`` lists it; command modules import the library inside the command, so start-up stays light.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

import embedx
from embedx.cli.common import EXIT_BAD_INPUT, EXIT_CLOSED_PIPE, EXIT_INTERRUPTED, echo, setup_logging, term, with_flags
from embedx.cli.common import reader_command
from embedx.cli.common import flag_for  # noqa: F401  (re-exported: the flag of a parameter, by command)
from embedx.cli.options import verbosity_options
from embedx.errors import EmbedxError, StorageError, one_line

# command name -> "module:function" under embedx.cli (see click's "Lazily Loading Subcommands")
COMMANDS = {
    "demo": "demo:demo",
    "drift": "drift:drift",
    "embed": "embed:embed",
    "export": "export:export",
    "finetune": "finetune:finetune",
    "import": "import_:import_",
    "info": "info:info",
    "measure": "measure:measure",
    "predict": "predict:predict",
    "profile": "profile:profile",
    "study": "study:study",
    "transfer": "transfer:transfer",
    "verify": "verify:verify",
}


def closed_pipe() -> None:
    """The reader of stdout went away (``embedx info s.zarr | head -1``): nothing is left to say to it. Point
    stdout at devnull (so the interpreter's final flush cannot fail again) and exit quietly with 141, as a
    process killed by SIGPIPE (the Python documentation's recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no real file (an in-process runner)
        pass
    sys.exit(EXIT_CLOSED_PIPE)


def error_line(e: EmbedxError, command: click.Command | None) -> str:
    """``error: <message>``, each Python parameter the message names shown as the command's flag
    (:func:`embedx.cli.common.with_flags`); a parameter of ``e.param`` the message does not spell is named in
    front. Control characters and line breaks in the message (data it quotes: a class name, a path) are shown
    escaped (:func:`embedx.cli.common.term`)."""
    param = getattr(e, "param", None)  # a subclass may skip EmbedxError.__init__
    names = (param,) if isinstance(param, str) else tuple(param or ())
    msg, missing = with_flags(term(e, one_line=True), command, names)
    hint = getattr(e, "hint", None)
    if hint is not None:  # "no store at X: it looks like ..." (embedx.store.looks_like): the command that reads it
        msg += f": {term(reader_command(hint), one_line=True)}"
    return f"error: {', '.join(missing)}: {msg}" if missing else f"error: {msg}"


def storage_failed(e: Exception) -> None:
    """One line and exit 2 for a fault of the storage behind a URL that reached the command unnamed (no
    credentials, an endpoint unreachable or silent: ``embedx.fs.url.storage_fault``); nothing otherwise."""
    from embedx.fs.url import storage_fault

    fault = storage_fault(e)
    if fault is not None:
        echo(error_line(fault, None), err=True)
        quiet_teardown()
        sys.exit(EXIT_BAD_INPUT)


_ENTRY_POINT = False  # set by main(): this process ends with the command (not an in-process runner)


def quiet_teardown() -> None:
    """The process ends on a storage fault: zarr's other requests of the same read, still pending on its event loop,
    would each be reported by the interpreter at exit ("Task was destroyed but it is pending!", "Exception ignored
    in ..."); the one line said it all. Only in the console entry point: an in-process caller keeps its hooks."""
    import logging

    if not _ENTRY_POINT:
        return

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda unraisable: None


class EmbedxGroup(click.Group):
    """Loads each command on first use; turns library errors into one line on stderr and a non-zero exit,
    never a traceback."""

    def list_commands(self, ctx):
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attr = COMMANDS[cmd_name].split(":")
        cmd = getattr(importlib.import_module(f"embedx.cli.{module}"), attr)
        self.commands[cmd_name] = cmd
        return cmd

    def resolve_command(self, ctx, args):
        """click's lookup; an unknown command is one usage line naming the nearest command (difflib), if any."""
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            from embedx.cli.options import did_you_mean

            raise click.UsageError(f"no such command {name!r}{did_you_mean(name, self.list_commands(ctx))}", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EmbedxError as e:
            sub = ctx.invoked_subcommand
            echo(error_line(e, self.get_command(ctx, sub) if sub else None), err=True)
            if isinstance(e, StorageError):
                quiet_teardown()
            sys.exit(EXIT_BAD_INPUT)
        except BrokenPipeError:
            closed_pipe()
        except KeyboardInterrupt:
            if ctx.invoked_subcommand == "import":  # imports do not resume (embedx.store.layout.finish_hint)
                echo("interrupted: the import did not finish and does not resume: rerun it (with --overwrite "
                     "when --out is a URL, where it was written in place)", err=True)
            else:
                echo("interrupted: committed rows are kept; rerun the same command to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.UsageError as e:  # a bad option value, a missing argument: one line, as every other error
            if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                raise
            where = e.ctx.command_path if e.ctx is not None else "embedx"
            echo(term(f"error: {one_line(e.format_message())} (see: {where} --help)", one_line=True),
                 err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except OSError as e:  # an expected failure of the machine (disk full, I/O error, permissions): not a bug
            storage_failed(e)
            where = e.filename if e.filename is not None else "?"
            echo(term(f"error: {where}: {e.strerror or one_line(e, 300)}", one_line=True), err=True)
            sys.exit(EXIT_BAD_INPUT)
        except Exception as e:  # a bug: still one line, the traceback on request
            storage_failed(e)
            if os.environ.get("EMBEDX_DEBUG"):
                raise
            msg = one_line(e, 300)
            echo(term(f"error: internal {type(e).__name__}: {msg} (set EMBEDX_DEBUG=1 for the traceback)", True),
                 err=True)
            sys.exit(1)


@click.group(cls=EmbedxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(embedx.__version__, prog_name="embedx")
@verbosity_options
@click.pass_context
def cli(ctx):
    """embedx: embedding analytics for contrastive vision-language models.

    \b
    Typical session:
      embedx embed --model ViT-B-32 --pretrained openai --data folder:~/pets --out pets.zarr
      embedx info pets.zarr
      embedx import --paired-array feats.npy --out coco.zarr
      embedx demo
    """
    obj = ctx.ensure_object(dict)  # -q/-v (here or after the command: embedx.cli.options.verbosity_options)
    setup_logging(quiet=bool(obj.get("quiet")), verbose=bool(obj.get("verbose")))


def main() -> None:
    global _ENTRY_POINT
    _ENTRY_POINT = True
    try:
        try:
            cli(prog_name="embedx")
        finally:
            sys.stdout.flush()  # a closed pipe shows here at the latest, not in the interpreter's exit
    except BrokenPipeError:
        closed_pipe()


if __name__ == "__main__":
    main()
