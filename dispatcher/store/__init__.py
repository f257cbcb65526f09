"""Repository functions over the results store: the only place SQL is written."""
