"""Errors of exported models."""


class ExportError(ValueError):
    """An export that cannot be written or an exported model that cannot be used; the message names the file."""
