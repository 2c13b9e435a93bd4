"""Entry point of the ``otbr`` command: a thin Click layer over the library.

Only this module configures logging; a user error (:class:`otbr.OtbrError`, a
bad path, a malformed option) ends with one line on stderr and exit status 2,
never a traceback.

Example:
    $ otbr --help
    $ otbr list
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from otbr import OtbrError, __version__

_COMMAND_MODULES = ("cmd_info", "cmd_train", "cmd_defend", "cmd_tsbd", "cmd_baselines", "cmd_compare")


class _Group(click.Group):
    """A group that reports OtbrError (and other expected failures) as one line."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except OtbrError as exc:
            raise click.ClickException(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise click.ClickException(f"{exc.strerror}: {exc.filename}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


click.ClickException.exit_code = 2


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="otbr")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
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
    ctx.obj["quiet"] = quiet
    ctx.obj["progress"] = not quiet and sys.stderr.isatty()


def _register() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue  # a command family not shipped in this build
            raise
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":
    main()
