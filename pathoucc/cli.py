"""Command line: a thin layer over the pipeline's functions. Bad input ends in one line, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pathoucc.errors import PathouccError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Weakly supervised clustering and segmentation from unique class counts (UCC).")
_state = {"debug": False}


@app.callback()
def _global(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/mnist.yaml")],
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<config name>)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=value")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint")] = False,
) -> None:
    """Train a UCC model on bags, then evaluate its clustering."""
    from pathoucc.config import load_config
    from pathoucc.train import train_run

    cfg = load_config(config, set_ or [])
    train_run(cfg, out or Path("runs") / config.stem, resume=resume)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `pathoucc train`")],
    split: Annotated[str | None, typer.Option(help="test or val (default: the config's eval.split)")] = None,
) -> None:
    """Cluster the held-out instances with the run's features and score them (ACC, NMI, ARI)."""
    from pathoucc.evaluate import evaluate_run

    evaluate_run(run, split=split)


def main() -> None:
    """Entry point of the ``pathoucc`` console script."""
    debug = "--debug" in sys.argv[1:]
    try:
        app(standalone_mode=False)
    except PathouccError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
