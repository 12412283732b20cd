"""The simulated runtime and network (private; see ``sansio_aio.testing``)."""
