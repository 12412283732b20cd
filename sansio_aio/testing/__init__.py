"""sansio_aio.testing: drive Sans-I/O tasks deterministically (fake clock, simulated
network, simulated runtime) and a pytest plugin for the real runtime."""
