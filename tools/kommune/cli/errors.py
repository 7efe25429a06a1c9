"""The CLI's error type: `main` turns it into one line on stderr and exit 2."""


class CliError(Exception):
    """A failure the user can act on; its message is the whole story, one line."""

    exit_code = 2
