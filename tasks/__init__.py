"""`import tasks` from a checkout (t5x's convention): the project's seqio tasks.

The registrations live in the installed package, `tinythinker_jax.tasks`; this
folder only lets a t5x run that has this repository on its path write
`import tasks` (see that module for the task names and their files).
"""

from tinythinker_jax.tasks import *  # noqa: F401,F403
from tinythinker_jax.tasks import register_all

register_all()
