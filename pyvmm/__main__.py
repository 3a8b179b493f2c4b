"""``python -m pyvmm`` is the ``pyvmm`` command."""

from pyvmm.entry import main

main()
