"""Where an attempt runs: the local machine, RunPod, Vast.ai, SkyPilot; one module each behind backends.base."""
