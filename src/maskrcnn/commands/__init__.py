"""Sub-commands of the ``maskrcnn`` CLI: one module each, exposing ``add_parser(sub)`` and ``run(args)``."""
