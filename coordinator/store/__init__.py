"""The state store: one interface (base.py), SQLite and Redis backends."""
