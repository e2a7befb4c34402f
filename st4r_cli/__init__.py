"""st4r: 4D reconstruction and world-frame 3D tracking from a monocular video (ST4RTrack+)."""

__version__ = "0.1.0"
