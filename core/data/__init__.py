"""Data: ImageFolder datasets and loaders (datasets.py), transforms (transforms.py), bundled real datasets
(bundled.py)."""
