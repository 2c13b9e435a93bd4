"""The ``otbr`` command line (installed as the ``otbr.cli`` package)."""
