"""``python -m llama_index_crab.cli``: the ``crab`` command."""

from . import main

main()
