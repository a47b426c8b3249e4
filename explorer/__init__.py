"""mnist-explorer internals: one job per module (config, data, optim, train, store, report, plots)."""
