"""`python -m tinythinker_jax.export`: the same as `tinythinker export`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="export"))
