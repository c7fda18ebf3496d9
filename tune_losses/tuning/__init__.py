"""Sweeps on Ray Tune: the runner, the trial function, search-space domains, starting Ray."""
