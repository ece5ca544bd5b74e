"""wakegrid: multi-site high availability and power frugality for self-hosted fleets."""

__version__ = "0.1.0"
