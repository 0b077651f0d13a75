"""Alembic revisions (a package only so that installs include them)."""
