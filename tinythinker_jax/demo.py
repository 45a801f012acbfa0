"""`python -m tinythinker_jax.demo`: the same as `tinythinker demo`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="demo"))
