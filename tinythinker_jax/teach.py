"""`python -m tinythinker_jax.teach`: the same as `tinythinker teach`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="teach"))
