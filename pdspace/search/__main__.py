"""`python -m pdspace.search` = `pdspace-search`."""

from pdspace.search.cli import main

main()
