"""`python -m tinythinker_jax VERB [flags]`: the `tinythinker` command."""

from tinythinker_jax.cli.main import console_main

console_main()
