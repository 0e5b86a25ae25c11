"""Emptying the test database between transactional tests quickly on PostgreSQL.

Django empties it after each transactional test with one `TRUNCATE` of every table. On PostgreSQL a
TRUNCATE makes new files for each table and its indexes: measured here, 200 ms for kbsite's 19 tables,
each time, although a test leaves a few rows at most. `DELETE FROM` each table, in the one transaction
Django's flush already opens, removes the same rows in 9-18 ms; Django's foreign keys on PostgreSQL
are `DEFERRABLE INITIALLY DEFERRED`, so the order of the tables does not matter. Only a flush that
keeps the sequences (`reset_sequences=False`, what every transactional test asks for) is changed.

Content types and permissions are kept: Django's flush writes them all back at once (its post_migrate
signal), 50-70 ms more on PostgreSQL, and no test adds or removes one.
"""

from __future__ import annotations

from django.db.backends.postgresql.operations import DatabaseOperations

_truncating_flush = DatabaseOperations.sql_flush
#: What migrations write and the post_migrate signal would write back, identical, after every flush.
KEPT = frozenset({"django_content_type", "auth_permission"})


def _deleting_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
    if reset_sequences or allow_cascade:
        return _truncating_flush(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
    return [
        f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};"
        for table in tables
        if table not in KEPT
    ]


def flush_by_delete() -> None:
    """Make every PostgreSQL flush that keeps the sequences delete rows instead of truncating tables."""
    DatabaseOperations.sql_flush = _deleting_flush
