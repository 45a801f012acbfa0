"""`python -m tinythinker_jax.data`: the same as `tinythinker data`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="data"))
