"""obpipe-story: the story service (see story/cli.py)."""
