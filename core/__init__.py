"""ftl core: the fine-tuning engine. A library that knows nothing of SLURM, sweeps or the CLI.

    from core import config, engine
    cfg = config.load("fine_tune", ["data.train_dir=data/fmnist/train"])
    result = engine.fit(cfg, "runs/my-run")
"""
