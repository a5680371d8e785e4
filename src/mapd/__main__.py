"""`python -m mapd` (and `accelerate launch -m mapd`) runs the command line."""

from mapd.cli import main

main()
