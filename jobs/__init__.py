"""Jobs: the callables that run on a node (locally or under SLURM), plus their recipes and sweep files."""
