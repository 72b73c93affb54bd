"""ftl launcher: sweeps, clusters, executors, the sweep manifest and the `ftl` CLI."""
