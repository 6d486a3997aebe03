"""The ``tcu`` command line. Each subcommand is a module here with ``register(subparsers)``."""
