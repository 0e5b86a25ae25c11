"""What a server process loads to answer its first search: not the document readers, not onnx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.embedding.minilm import MiniLMEmbedder

pytestmark = [pytest.mark.integration, pytest.mark.database_free]

ROOT = Path(__file__).resolve().parents[2]

# Loaded only where a file is read (the sandbox's children) or the queries' model is made.
HEAVY = ("pypdf", "docx", "bs4", "lxml", "onnx", "ml_dtypes")

SERVER = """
import asyncio, json, sys
import django
django.setup()
import kbsite.asgi  # the server's application, with its URLs and APIs
from search.embedding import embedding_service
vector = asyncio.run(embedding_service.embed_query("why does the tide come in twice a day"))
print(json.dumps({"dimensions": len(vector), "loaded": [name for name in %r if name in sys.modules]}))
"""


def test_a_restarted_server_answers_its_first_query_without_the_readers_or_onnx(tmp_path) -> None:
    # What the site's first query kept: the queries' model, made once in this folder.
    MiniLMEmbedder(threads=1, cache_dir=tmp_path / "cache").embed_queries(["the site's first query"])
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "kbsite.settings", "KBSITE_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)

    done = subprocess.run(
        [sys.executable, "-c", SERVER % (HEAVY,)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"dimensions": 384, "loaded": []}
