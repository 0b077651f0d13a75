"""Alembic migrations, shipped in the package so an installed egresswatch can migrate."""
