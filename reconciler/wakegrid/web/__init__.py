"""The daemon's web parts: the wake request path (:mod:`wakegrid.web.wake`) and its waiting page."""
