"""Command-line subcommands: each module defines `register(subparsers)`."""
