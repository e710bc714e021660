"""TTBoost: a self-hosted TikTok LIVE companion server."""

__version__ = "0.1.0"
