"""Ray Tune sweeps whose trials are full training runs (Ray Train inside each trial)."""
