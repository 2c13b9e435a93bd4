"""Entry point of the ``otbr`` command: a thin Click layer over the library.

Only this module configures logging and signal handling; a user error
(:class:`otbr.OtbrError`, a bad path, a malformed option) ends with one line on
stderr and exit status 2, never a traceback (``otbr --debug …`` shows it); an
unexpected error ends with one line and exit status 1; Ctrl-C and SIGTERM end
with ``interrupted`` and exit status 130, leaving no partial output.

Example:
    $ otbr --help
    $ otbr list
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading

import click

from otbr import OtbrError, __version__

_COMMAND_MODULES = ("cmd_info", "cmd_train", "cmd_defend", "cmd_tsbd", "cmd_baselines", "cmd_compare")


class _Group(click.Group):
    """A group that reports user errors as one line (exit 2) and never shows a traceback unless ``--debug``.

    * :class:`OtbrError` and file-system errors: ``Error: <what is wrong and how to fix it>``, exit 2;
    * a malformed option of a subcommand: click's message and where to read the options, on one line, exit 2;
    * an unexpected exception: its type and message and a pointer to ``--debug``, exit 1;
    * Ctrl-C or SIGTERM: ``interrupted``, exit 130 (outputs are written atomically, so nothing partial remains).
    """

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.UsageError as exc:
            if _debug(ctx):
                raise
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise click.ClickException(f"{exc.format_message()} (see '{where} --help')") from None
        except click.ClickException:
            raise
        except OtbrError as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            if _debug(ctx):
                raise
            raise click.ClickException(f"{exc.strerror}: {exc.filename}") from None
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if _debug(ctx):
                raise
            text = " ".join(str(exc).split())[:300]
            click.echo(f"Error: unexpected {type(exc).__name__}: {text} (re-run with 'otbr --debug …' for the "
                       "traceback and report it)", err=True)
            sys.exit(1)


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or bool(os.environ.get("OTBR_DEBUG"))


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM → KeyboardInterrupt, so atomic writers clean up their temporary files."""
    raise KeyboardInterrupt


click.ClickException.exit_code = 2


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="otbr")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also: OTBR_DEBUG=1).")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Remove backdoors from trained image classifiers — with no data (OTBR) or a little clean data (TSBD, …).

    \b
    Quick start:
      otbr train --data fashion-mnist --arch preactresnet18 --width 16 --attack badnets --epochs 3 -o bd.safetensors
      otbr evaluate bd.safetensors
      otbr defend otbr bd.safetensors -o clean.safetensors
    """
    level = logging.WARNING if quiet else (logging.INFO if verbose == 0 else logging.DEBUG)
    # Our own messages at the chosen level; third-party libraries only speak up with -vv.
    logging.basicConfig(level=logging.WARNING if verbose < 2 else logging.DEBUG,
                        format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("otbr").setLevel(level)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    ctx.obj["progress"] = not quiet and sys.stderr.isatty()
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


def _register() -> None:
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":
    main()
