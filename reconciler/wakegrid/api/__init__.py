"""The reconciler's HTTP API: routes (``/api``), the views they and the dashboard share, and who may use them."""
