"""Sweeps: the Ray Tune runner and the trial function."""
