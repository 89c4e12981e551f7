"""Top-level typer app; sub-commands live in their own modules and register here.

Errors reach the user as one line each, whatever they hold: :func:`main` prints every message
through :func:`huref.paths.shown` (a path or tensor name with a newline or a terminal escape code
stays on its line, escaped), and keeps the warnings that libraries (transformers, torch, numpy)
emit from adding lines of their own: without ``--debug`` they are dropped, or with ``--verbose``
logged as one line each. ``--debug`` shows everything as Python would, tracebacks included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import warnings
from collections.abc import Iterator

import typer

from huref import __version__
from huref.errors import HurefError
from huref.paths import shown

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
    "huref.cli.arch_cmd",
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


def _error(message: object) -> None:
    """One line on stderr: control characters of paths and names escaped (see huref.paths.shown)."""
    print(f"huref: error: {shown(message)}", file=sys.stderr)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    logging.getLogger("py.warnings").warning(
        "%s", shown(f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})")
    )


@contextlib.contextmanager
def _library_warnings(debug: bool, verbose: bool) -> Iterator[None]:
    """Warnings of libraries (a transformers FutureWarning, a torch UserWarning) print several
    lines of their own between the command's output and its one-line error: dropped by default,
    one log line each with --verbose, Python's own display with --debug. Transformers' logger,
    which prints outside the warnings module, is held to errors unless --verbose or --debug."""
    if debug:
        yield
        return
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
        if "transformers" in sys.modules:
            logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        if verbose:
            warnings.simplefilter("default")
            warnings.showwarning = _log_warning
        else:
            warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point: any HurefError becomes one line on stderr and exit code 2; an error of the
    operating system (disk full, permissions) one line and exit code 3."""
    _register()
    args = sys.argv[1:] if argv is None else argv
    _INVOCATION[:] = ["huref", *args]
    debug = "--debug" in args
    try:
        with _library_warnings(debug, verbose=bool({"-v", "--verbose"} & set(args))):
            rv = app(args=args, standalone_mode=False)
    except HurefError as e:
        if _DEBUG["on"] or debug:
            raise
        _error(e)
        return e.exit_code
    except OSError as e:  # the system refused: disk full, file size limit, permissions, I/O error
        if _DEBUG["on"] or debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        _error(f"system error: {e.strerror or e}{where}")
        return OS_ERROR_EXIT
    except sqlite3.Error as e:  # the registry maps its own; this is the net under any other database
        if _DEBUG["on"] or debug:
            raise
        _error(f"database error: {e}")
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
            _error(show())
            return 2
        raise
    return rv if isinstance(rv, int) else 0
