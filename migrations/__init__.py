"""Alembic migrations: the top-level `migrations/` of the source tree, shipped in the package as
`egresswatch.migrations` (pyproject.toml maps it) so an installed egresswatch can migrate."""
