"""The verbs: one module per `tinythinker VERB`, named as the verb (`main.py`
dispatches). Each reads flags and gin, then runs one stage (`stages/`); no verb
imports another, and nothing below imports a verb."""
