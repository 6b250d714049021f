"""audiotag: audio-tagging competition pipeline built on pretrained audio representations."""

__version__ = "0.1.0"
