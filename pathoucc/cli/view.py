"""`pathoucc view`: segmentation outputs over their slides in the browser (a local server, or static files)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer

from pathoucc.cli.app import app
from pathoucc.options import ViewOptions, validate_options


@app.command()
def view(
    paths: Annotated[list[Path], typer.Argument(help="Segmentation folders (`pathoucc segment --out`), a folder "
                                                     "of them, or a run folder with segments/", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default: only this machine)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port)")] = 8000,
    slide_dir: Annotated[Path | None, typer.Option(help="Where to look for slides that moved since segmentation "
                                                        "(by file name)")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="Write the viewer as static files to this folder "
                                                                 "instead of serving it")] = None,
    cache_mb: Annotated[int, typer.Option(help="Memory for rendered tiles, MB")] = 256,
    workers: Annotated[int | None, typer.Option(help="Threads rendering tiles for --export")] = None,
) -> None:
    """Pan and zoom the slides with their cluster maps on top, in a browser; or export that page (--export)."""
    from pathoucc.view import Site, bind, export_site, load_views, serve

    options = validate_options(ViewOptions, dict(host=host, port=port, slide_dir=slide_dir, cache_mb=cache_mb,
                                                 workers=workers))
    views = load_views(list(paths), options.slide_dir)
    sock = None if export is not None else bind(options.host, options.port)  # a port in use fails before the work
    site = Site(views, cache_bytes=options.cache_mb << 20)
    try:
        if export is not None:
            report = export_site(site, export, options.workers, progress=sys.stderr.isatty())
            typer.echo(f"exported {len(views)} slide(s): {report.rendered} tiles rendered, {report.resumed} kept "
                       f"from an interrupted export -> {report.out / 'index.html'}")
            return
        h, p = sock.getsockname()[:2]
        if not ipaddress.ip_address(h).is_loopback:
            typer.echo(f"warning: {h}:{p} is reachable from other machines; the slides are served to anyone "
                       "who can connect", err=True)
        typer.echo(f"serving {len(views)} slide(s) at http://{f'[{h}]' if ':' in h else h}:{p}/ (Ctrl-C to stop)")
        try:
            serve(site, sock)
        except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again
            typer.echo("stopped")
    finally:
        site.close()
        if sock is not None:
            sock.close()
