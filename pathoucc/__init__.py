"""pathoucc: weakly supervised clustering of instances from bag-level unique class counts."""

__version__ = "0.1.0"
