"""Documents in, searchable chunks out.

- `extraction`: text out of .txt, .md, .html, .pdf and .docx files, within limits, with clear failures.
- `sandbox`: runs extraction in a child process with a memory and time budget no file can exceed.
- `pipeline`: the queue (the Document table: claims with a lease, retries with backoff) and the
  processing of one document: extract, chunk, embed, write to Qdrant, mark ready or failed.
- `worker`: takes due documents off the queue, in a process of its own or inside the web server.
- `events`: wakes an in-process worker when work is queued.
- `file_import`: files and folders from the command line, known by their relative path.
- `preview`: the chunks an uploaded file would make, read in the sandbox, without storing anything.
"""
