"""`python -m proxy` is the `bounceproxy` command."""
from proxy.cli import main

main()
