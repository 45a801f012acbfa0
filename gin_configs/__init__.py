"""Gin configs (t5x's `configs/`): `runs/`, `models/`, `experiments/`.

Installed as the package data of `tinythinker_jax.gin_configs` (setup.py maps
this folder there), so `--gin_file=runs/sft.gin` resolves from a source
checkout and from an installed wheel alike.
"""
