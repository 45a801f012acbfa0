"""`python -m tinythinker_jax.train`: the same as `tinythinker train`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="train"))
