"""A knowledge base written to one portable archive and restored from it (manage.py export_kb, import_kb)."""
