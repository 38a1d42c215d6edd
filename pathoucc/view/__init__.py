"""Stage 7, the browser viewer: segmentation outputs over their slides, at every zoom (``pathoucc view``).

:func:`~.sources.load_views` reads the segmentation folders (cluster map, patches, colours, names, the slide);
:class:`~.site.Site` is the viewer as a read-only tree of files (the page, OpenSeadragon, the slide's and each
cluster's Deep Zoom pyramid of :mod:`.dzi`); :func:`~.server.serve` serves it on loopback and
:func:`~.export.export_site` writes it as static files.
"""

from pathoucc.view.export import ExportReport, export_site
from pathoucc.view.server import bind, create_app, serve
from pathoucc.view.site import Site, SiteError
from pathoucc.view.sources import SlideView, find_segmentations, load_view, load_views

__all__ = ["ExportReport", "Site", "SiteError", "SlideView", "bind", "create_app", "export_site",
           "find_segmentations", "load_view", "load_views", "serve"]
