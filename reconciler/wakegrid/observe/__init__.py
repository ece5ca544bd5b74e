"""Observers: what the fleet really looks like right now (the I/O edge of the reconciler)."""
