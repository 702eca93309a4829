"""Helper programs tests run inside their network namespaces.

Each module is a small command-line program, started as ``python -m tests.lab.tools.<name>``
through ``tests.lab.netns.tool(name, *args)`` (the repo's venv interpreter, the repo root on
the module path). They are real modules so that ruff and mypy check them like the tests; a
test must not embed a program in a string. Each prints what the test reads on stdout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, document: object) -> None:
    """Replace ``path`` with ``document`` as JSON, atomically (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)
