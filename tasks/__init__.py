"""seqio Task and Mixture registrations over rationale records.

`import tasks` registers `tinythinker.<dataset>.<format>[.<stage>]` for every
dataset of `tinythinker_jax.data.datasets` (see `tasks.rationale_tasks`), so a
t5x run can train on these names with
`MIXTURE_OR_TASK_NAME = 'tinythinker.csqa.tinythinker'` after pointing
`$TINYTHINKER_RECORDS_DIR` at the rationale records and `$TINYTHINKER_VOCAB` at
its vocabulary.
"""

from tasks import rationale_tasks

rationale_tasks.register_all()
