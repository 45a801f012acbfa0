"""Datasets: loaders for official file formats and seeded synthetic generators."""
