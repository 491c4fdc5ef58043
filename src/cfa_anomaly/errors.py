"""The one base class of the errors a user can fix (the `cfa` command reports them without a traceback)."""


class CfaError(Exception):
    """A problem the user can fix: the message names the file or key and says what to do."""
