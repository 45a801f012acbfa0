"""`python -m tinythinker_jax.infer`: the same as `tinythinker infer`."""

from tinythinker_jax import main

if __name__ == "__main__":
  raise SystemExit(main.main(verb="infer"))
