"""The ``qmo`` subcommands. Each module exposes ``add_parser(subparsers)`` and ``run(args) -> int`` and is
imported only when its subcommand runs, so ``qmo plan`` never pays for kopf or torch."""
