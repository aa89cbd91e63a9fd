"""The evolving trainer: train.py, hardware-class profiles, and the subprocess runner."""
