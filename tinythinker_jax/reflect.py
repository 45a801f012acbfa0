"""`python -m tinythinker_jax.reflect`: the same as `tinythinker reflect`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="reflect"))
