"""Pages for every member of a knowledge base: sign in, search, read a document, upload and archive."""
