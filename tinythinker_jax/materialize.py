"""`python -m tinythinker_jax.materialize`: the same as `tinythinker materialize`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="materialize"))
