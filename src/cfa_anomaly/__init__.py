"""CFA: Coupled-hypersphere-based Feature Adaptation for anomaly localization."""

__version__ = "0.1.0"
