"""autoseg: self-configuring segmentation of liver, hepatic vessels and liver tumours in CT."""
__version__ = "0.1.0"
