"""Policy: what to run next and what counts as a win. Reads state through a narrow interface."""
