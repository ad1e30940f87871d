"""Label inference: the stage between a traced graph and its label groups."""
