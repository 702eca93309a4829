"""Helper programs tests run inside their network namespaces.

Each module is a small command-line program, started as ``python -m tests.lab.tools.<name>``
through ``tests.lab.netns.tool(name, *args)`` (the repo's venv interpreter, the repo root on
the module path). They are real modules so that ruff and mypy check them like the tests; a
test must not embed a program in a string. Each prints what the test reads on stdout.
"""
