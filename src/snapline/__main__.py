"""``python -m snapline``."""

from snapline.cli.main import main

main()
