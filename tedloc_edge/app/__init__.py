"""tedloc_edge.app: the application layer above every stage (the `tedloc-edge` CLI, the eval command, the demo).

Layers, each importing only those below it: core (`tedloc_edge.*`) <- runtime <- export / train <- app.
"""
