"""The `kdmt` command line: one module per command (or pair of commands), each thin over the kdmt library;
`app` registers them."""

from kdmt.cli.app import app, main

__all__ = ["app", "main"]
