"""`python -m tinythinker_jax.pipeline`: the same as `tinythinker pipeline`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="pipeline"))
