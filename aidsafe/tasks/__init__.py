"""Commands that are not generation: judging responses, grading rows, filtering, exporting, and
comparing runs. Judging and grading run on the same pipeline as the recipes."""
