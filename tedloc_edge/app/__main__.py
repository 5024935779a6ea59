from tedloc_edge.app.cli import main

main()
