"""surgray: SAM2-family segmentation and tracking of surgical video, at archive scale on Ray."""

__version__ = "0.1.0"
