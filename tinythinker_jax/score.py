"""`python -m tinythinker_jax.score`: the same as `tinythinker score`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="score"))
