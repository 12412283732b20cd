"""I/O drivers: UDP, TCP and TUN/TAP, each a :class:`~sansio_aio.driver.Driver`."""
