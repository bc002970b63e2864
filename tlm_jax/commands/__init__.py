"""Subcommands of ``tlm``: each module defines ``add_parser(subparsers)``.

``add_parser`` registers one or more subcommands and sets ``func`` (a
``Namespace -> int`` function) with ``set_defaults``. Import heavy modules
inside ``func`` so ``tlm --help`` stays fast.
"""
