"""The pytest plugin of sansio_aio (registered through the ``pytest11`` entry point)."""
