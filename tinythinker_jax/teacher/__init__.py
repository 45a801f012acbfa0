"""Teachers: an OpenAI-compatible client, prompts, reply parsing, the rationale pipelines."""
