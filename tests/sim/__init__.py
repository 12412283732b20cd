"""Seeded simulation scenarios of the project's own code, swept over many seeds."""
