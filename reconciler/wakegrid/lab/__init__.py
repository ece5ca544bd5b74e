"""The lab: a whole multi-site fleet on one Linux machine, on real parts."""
