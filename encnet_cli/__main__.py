"""``python -m encnet_cli``: the same as the ``encnet`` command (used with torchrun)."""

from encnet_cli.main import main

main()
