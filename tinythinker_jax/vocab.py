"""`python -m tinythinker_jax.vocab`: the same as `tinythinker vocab`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="vocab"))
