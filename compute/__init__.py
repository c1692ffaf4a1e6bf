"""Matrix work on simulated RRAM crossbar arrays: devices, tiles, partitioning, execution."""
