"""Top-level typer app; sub-commands live in their own modules and register here."""

from __future__ import annotations

import logging
import sqlite3
import sys

import typer

from huref import __version__
from huref.errors import HurefError

app = typer.Typer(
    name="huref",
    help="Forensic audit toolkit for large language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_DEBUG = {"on": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"huref {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _DEBUG["on"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# Command modules; each registers its commands on ``app`` when imported.
COMMAND_MODULES = (
    "huref.cli.inspect_cmd",
    "huref.cli.science_cmds",
    "huref.cli.registry_cmd",
    "huref.cli.scan_cmd",
    "huref.cli.fpvec_cmd",
    "huref.cli.dog_cmd",
    "huref.cli.encoder_cmd",
    "huref.cli.audit_cmd",
)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name)


_INVOCATION: list[str] = []


def check_fail_on(value: str | None, allowed: tuple[str, ...]) -> None:
    """``--fail-on`` must name one of the verdicts a command can give: a typo would turn a CI gate off."""
    from huref.errors import UsageError

    if value is not None and value not in allowed:
        raise UsageError(f"--fail-on takes one of {', '.join(allowed)} (got {value!r})")


def invocation() -> list[str]:
    """The command line of the running ``huref`` call, for reproducibility records."""
    return list(_INVOCATION) or ["huref", *sys.argv[1:]]


OS_ERROR_EXIT = 3  # neither a verdict (1) nor bad input (2): the operating system refused


def main(argv: list[str] | None = None) -> int:
    """Entry point: any HurefError becomes one line on stderr and exit code 2; an error of the
    operating system (disk full, permissions) one line and exit code 3."""
    _register()
    args = sys.argv[1:] if argv is None else argv
    _INVOCATION[:] = ["huref", *args]
    try:
        rv = app(args=args, standalone_mode=False)
    except HurefError as e:
        if _DEBUG["on"] or "--debug" in args:
            raise
        print(f"huref: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the system refused: disk full, file size limit, permissions, I/O error
        if _DEBUG["on"] or "--debug" in args:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"huref: error: system error: {e.strerror or e}{where}", file=sys.stderr)
        return OS_ERROR_EXIT
    except sqlite3.Error as e:  # the registry maps its own; this is the net under any other database
        if _DEBUG["on"] or "--debug" in args:
            raise
        print(f"huref: error: database error: {e}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        print("huref: aborted", file=sys.stderr)
        return 130
    except Exception as e:  # click usage errors arrive as ClickException subclasses
        code = getattr(e, "exit_code", None)
        show = getattr(e, "format_message", None)
        if code is not None and show is not None:
            print(f"huref: error: {show()}", file=sys.stderr)
            return 2
        raise
    return rv if isinstance(rv, int) else 0
