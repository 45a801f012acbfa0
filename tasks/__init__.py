"""seqio Task and Mixture registrations over rationale records.

Importing this package registers the project's tasks, so a t5x run can
`import tasks` and train on their names. The registrations arrive with the
seqio tasks and phase-1 trainer (issue #4); the rationale formats they encode
arrive with issue #3.
"""
