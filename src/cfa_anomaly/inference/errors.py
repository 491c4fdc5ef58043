"""Errors of exported models."""

from cfa_anomaly.errors import CfaError


class ExportError(CfaError, ValueError):
    """An export that cannot be written or an exported model that cannot be used; the message names the file."""
