"""The LIVE connection's failures in the project's own terms; the adapter maps library errors onto them."""

from __future__ import annotations


class LiveError(Exception):
    """Base of every failure the TikTok adapter reports."""

    code = "tiktok_error"


class UserOffline(LiveError):
    """The streamer exists but is not LIVE now: wait and check again."""

    code = "tiktok_offline"


class UserNotFound(LiveError):
    """No such TikTok user: permanent, do not retry."""

    code = "tiktok_user_not_found"


class Blocked(LiveError):
    """TikTok refused the handshake (device blocked, age restricted): permanent until the user acts."""

    code = "tiktok_blocked"


class SignRateLimited(LiveError):
    """The sign server said 429; retry after `retry_after` seconds."""

    code = "sign_rate_limited"

    def __init__(self, retry_after: float, message: str = "sign server rate limit") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConnectionDropped(LiveError):
    """The push connection broke (network, 1011, sign server unreachable): transient, back off and retry."""

    code = "tiktok_connection_lost"
