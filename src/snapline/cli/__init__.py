"""The ``snapline`` command line."""
