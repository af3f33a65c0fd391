"""`python -m pdspace.search` = `pdspace-search`."""

from pdspace.search.greedy import main

main()
