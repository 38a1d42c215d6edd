"""The typer app, the options several commands share, and `main`: every error becomes one line and an exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pathoucc.config import Device as DeviceChoice
from pathoucc.errors import PathouccError, TrainingInterrupted, one_line

# The commands that need torch and scikit-learn import their stage on use (a few seconds): `pathoucc tile` and
# `--help` need neither. The CLI sits on top of the package, so these imports cannot form a cycle.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Weakly supervised clustering and segmentation from unique class counts (UCC).")
_state = {"debug": False}  # set by the global callback from --debug (before the command), read by main()

# recent typer raises its own copy of click's exceptions, older typer click's own: BadParameter -> UsageError -> this
_ClickException = typer.BadParameter.__base__.__base__

# options shared by several commands, declared once
RunFolder = Annotated[Path, typer.Argument(help="Run folder written by `pathoucc train`")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=value")]
Clusters = Annotated[int | None, typer.Option("--k", help="Clusters (default: eval.k or the training classes)")]
BatchSize = Annotated[int | None, typer.Option(help="Patches per forward pass")]
Device = Annotated[DeviceChoice, typer.Option(help="Where to compute (auto: cuda when available, else cpu)")]
Amp = Annotated[bool | None, typer.Option("--amp/--fp32", help="Mixed-precision features (bf16 where the hardware "
                                          "has it) or fp32 (default: the run's eval.amp)")]


@app.callback()
def _global(debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks on errors. Give it before the command: pathoucc --debug train ...")
        ] = False) -> None:
    _state["debug"] = debug


def main() -> None:
    """The ``pathoucc`` console script: an error is one line on stderr and exit 2 (bad input, usage) or 1."""
    _state["debug"] = False  # the global callback sets it once the command line parses
    try:
        # with standalone_mode=False, click returns the code of a typer.Exit instead of raising it
        code = app(standalone_mode=False, prog_name="pathoucc")
    except PathouccError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except TrainingInterrupted as exc:  # SIGTERM, SIGUSR1 or Ctrl-C during `train`: 128 + the signal
        typer.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted (an interrupted `train` continues with --resume)", err=True)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except _ClickException as exc:  # usage errors: an unknown option, a bad choice, a missing argument
        sys.exit(_show_click_error(exc))
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        if _state["debug"]:
            raise
        typer.echo(one_line(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"), err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _show_click_error(exc: Any) -> int:
    """Print a usage error on one line (``error: <what> (see 'pathoucc train --help')``); return its exit code."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `pathoucc` alone: typer has printed the help (rich)
        return exc.exit_code
    what = exc.format_message().replace("Value error, ", "").removesuffix(".")
    if getattr(exc, "option_name", None) == "--debug":
        what = "--debug goes before the command: pathoucc --debug <command>"
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo(one_line(f"error: {what}{hint}"), err=True)
    return exc.exit_code
