"""`python -m tinythinker_jax.sample`: the same as `tinythinker sample`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="sample"))
