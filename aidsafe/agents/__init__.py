"""The agents recipes are made of: the run context (models, prompts, policies), thought records,
the safety judge and the CoT grader."""
