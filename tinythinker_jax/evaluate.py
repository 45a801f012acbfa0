"""`python -m tinythinker_jax.evaluate`: the same as `tinythinker evaluate`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="evaluate"))
