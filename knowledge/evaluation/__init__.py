"""Benchmarks of kbsite's own search quality, run by hand through `manage.py eval_retrieval`, never by the site.

- `retrieval`: a BEIR-style data set indexed into a throwaway knowledge base (owned by a throwaway
  superuser) through the real ingestion path, searched in each mode, and scored.
"""
