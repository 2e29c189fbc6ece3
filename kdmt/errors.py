"""The one exception type that the CLI turns into a clean one-line error."""


class KdmtError(Exception):
    """Bad input or a failed precondition: reported as one line on stderr, exit code 2."""
