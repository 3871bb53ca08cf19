"""``python -m rag`` is the ``rag`` command."""

from rag.cli import run

run(prog_name="rag")
