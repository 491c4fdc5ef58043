"""CFA: Coupled-hypersphere-based Feature Adaptation for anomaly localization."""

from cfa_anomaly.errors import CfaError

__version__ = "0.1.0"
__all__ = ["CfaError", "__version__"]
