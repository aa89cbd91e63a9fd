"""autoswarm.v1: generated stubs. Regenerate with `python proto/generate.py`; do not edit."""
