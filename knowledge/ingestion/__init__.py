"""Documents in, searchable chunks out.

- `extraction`: text out of .txt, .md, .html, .pdf and .docx files, within limits, with clear failures.
- `sandbox`: runs extraction in a child process with a memory and time budget no file can exceed.
- `queue`: the Document table as a queue: claims with a lease, renewals, and the outcomes (ready,
  failed, retry with backoff), each one conditional update.
- `pipeline`: the processing of one claimed document: extract, chunk, embed, write to Qdrant, record the outcome.
- `worker`: takes due documents off the queue, in a process of its own or inside the web server.
- `events`: wakes an in-process worker when work is queued.
- `file_import`: files and folders from the command line, known by their relative path.
- `preview`: the chunks an uploaded file would make, read in the sandbox, without storing anything.
"""
