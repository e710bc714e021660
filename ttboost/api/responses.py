"""Response bodies, for the OpenAPI document only: handlers build their JSON directly; these describe it."""

from __future__ import annotations

import copy
from typing import Final, Mapping

from marshmallow import INCLUDE, Schema, fields

from ..settings import SettingsUpdateSchema

# Error descriptions several routes share.
IP_RATE_LIMITED: Final = "too many requests (per client IP); see Retry-After"
HASH_BUSY: Final = "busy, try again: too many logins are waiting for a password check; see Retry-After"
USER_RATE_LIMITED: Final = "too many requests (per user); see Retry-After"
LICENSE_ERRORS: Final[Mapping[int, str]] = {403: "license not active | license expired", 404: "license not found",
                                           409: "license already bound to another user"}


def _str(description: str = "", **kwargs: object) -> fields.String:
    return fields.String(required=True, metadata={"description": description} if description else {}, **kwargs)


def _int(description: str = "") -> fields.Integer:
    return fields.Integer(required=True, metadata={"description": description} if description else {})


def _nullable_str(description: str) -> fields.String:
    return fields.String(required=True, allow_none=True, metadata={"description": description})


def _ok() -> fields.String:
    return _str("always \"ok\"")


def _all_present(schema: type[Schema], name: str, doc: str) -> type[Schema]:
    """schema's own fields, each marked present: a response cannot drift from the request schema it mirrors.
    Load-only fields (accepted old names such as auto_connect_live) are never answered."""
    declared = {key: copy.copy(value) for key, value in schema._declared_fields.items() if not value.load_only}
    for value in declared.values():
        value.required = True
    generated = Schema.from_dict(declared, name=name)
    generated.__doc__ = doc
    return generated


SettingsSchema = _all_present(SettingsUpdateSchema, "SettingsSchema",
                              "All settings of the streamer, defaults filled in.")


class OkSchema(Schema):
    """Done."""

    status = _ok()


class EventLogHealthSchema(Schema):
    """The event log's writer: rows not yet stored, and rows lost since start."""

    waiting = _int("rows waiting to be written (they wait through transient write errors)")
    dropped = _int("oldest waiting rows dropped since start because the database could not keep up")


class ClusterHealthSchema(Schema):
    worker_id = _str("this worker's name ([cluster] worker_id, default host-pid)")
    workers = _int("workers alive in the cluster (each renewed its entry within lease_seconds)")
    sessions_here = _int("LIVE sessions this worker runs")


class HealthSchema(Schema):
    """Liveness; `status` is "degraded" (with 503) when the database does not answer."""

    status = _str("ok | degraded")
    version = _str("server version")
    uptime_s = fields.Float(required=True, metadata={"description": "seconds since start"})
    db = _str("ok | error")
    live_sessions = _int("LIVE watches running")
    ws_clients = _int("open app WebSockets")
    event_log = fields.Nested(EventLogHealthSchema, required=True)
    cluster = fields.Nested(ClusterHealthSchema, metadata={"description": "cluster mode only"})


class ServiceSchema(Schema):
    """What answers here (the original's tools probe GET / for it)."""

    status = _str("always \"ok\"")
    service = _str("always \"ttboost\"")
    version = _str("server version")


class TokenResponseSchema(Schema):
    """Logged in: a Bearer token and the account's plan."""

    access_token = _str("JWT for `Authorization: Bearer`")
    token_type = _str("always \"bearer\"")
    expires_in = _int("seconds until the token expires")
    user_id = _int()
    username = _nullable_str("account username")
    plan = _nullable_str("plan id of the active, latest-expiring license; null without one")
    license_expires_at = _nullable_str("ISO 8601 UTC; null without a license")


class LegacyLoginResponseSchema(Schema):
    """Logged in (first mobile build): ws_token is an access token, also valid as Bearer. Typed as the seed
    sent it: user_id is a string."""

    status = _ok()
    user_id = _str("the account id, as a string")
    ws_token = _str("access token")
    ws_url = _str("WebSocket URL: <ws base>/ws/<ws_token>")
    server_time = _str("ISO 8601 UTC")
    expires_at = _str("when ws_token expires (server_time + token TTL), ISO 8601 UTC")


class MeSchema(Schema):
    """The logged-in account, its license and its settings."""

    id = _int()
    username = _nullable_str("null for a key-only account of the legacy login")
    tiktok_username = _nullable_str("the TikTok handle watched (defaults to the username)")
    plan = _nullable_str("plan id; null without a license")
    plan_name = _nullable_str("plan name from the config")
    license_expires_at = _nullable_str("ISO 8601 UTC")
    license_active = fields.Boolean(required=True)
    created_at = _str("ISO 8601 UTC")
    settings = fields.Nested(SettingsSchema, required=True)
    # The original app's screens and tools read these at the top level; the same values as in settings.
    voice_id = _str("= settings.voice_id")
    tts_enabled = fields.Boolean(required=True, metadata={"description": "= settings.tts_enabled"})
    tts_volume = _int("= settings.tts_volume")
    gifts_volume = _int("= settings.gifts_volume")


class IssuedLicenseSchema(Schema):
    """The order's key (the same one on every retry of the order)."""

    key = _str("TTB-XXXX-XXXX-XXXX")
    plan = _str()
    expires_at = _str("ISO 8601 UTC")


class RedeemedSchema(Schema):
    """The key is bound to the account; the account's plan after it."""

    status = _ok()
    plan = _nullable_str("plan id")
    license_expires_at = _nullable_str("ISO 8601 UTC")
    license_active = fields.Boolean(required=True)


class SettingsResponseSchema(Schema):
    """All settings, after the change."""

    status = _ok()
    settings = fields.Nested(SettingsSchema, required=True)


class TriggerSchema(Schema):
    """A trigger as stored."""

    id = _int()
    event_type = _str()
    condition_key = _str()
    condition_value = fields.Raw(required=True, allow_none=True,
                                 metadata={"description": "text, a whole number, or null for always"})
    action = _str("play_sound | tts")
    action_params = fields.Dict(required=True, keys=fields.String())
    enabled = fields.Boolean(required=True)
    priority = _int("higher first")
    cooldown_seconds = _int()
    once_per_stream = fields.Boolean(required=True)
    trigger_name = _str()
    executed_count = _int()
    created_at = _str("ISO 8601 UTC")


class TriggerResponseSchema(Schema):
    """The saved trigger."""

    status = _ok()
    trigger = fields.Nested(TriggerSchema, required=True)


class TriggerListSchema(Schema):
    """Triggers by priority (high first), then creation."""

    triggers = fields.List(fields.Nested(TriggerSchema), required=True)


class UploadedSoundSchema(Schema):
    """The stored sound."""

    status = _ok()
    filename = _str("sanitized stored name; the key for triggers and delete")
    url = _str("absolute URL of the file")
    size = _int("bytes")
    duration_ms = _int()
    format = _str("mp3 | wav | ogg | m4a")


class SoundSchema(Schema):
    """A stored sound."""

    filename = _str()
    url = _str()
    size = _int("bytes")
    duration_ms = _int()
    format = _str("mp3 | wav | ogg | m4a")
    created_at = _str("ISO 8601 UTC")


class SoundListSchema(Schema):
    """The user's sounds, newest first."""

    sounds = fields.List(fields.Nested(SoundSchema), required=True)


class SpeechSchema(Schema):
    """The phrase's URL; it answers as soon as audio exists (streamed while synthesis runs)."""

    url = _str("absolute URL of /static/tts/<key>.mp3")
    voice_id = _str()
    cached = fields.Boolean(required=True, metadata={"description": "the phrase was synthesized before"})


class LegacySpeechSchema(Schema):
    """The phrase's URL."""

    url = _str()


class VoiceSchema(Schema):
    """A voice."""

    id = _str("e.g. ru-RU-SvetlanaNeural")
    name = _str()
    locale = _str()
    gender = _str()
    engine = _str()


class VoiceListSchema(Schema):
    """The voices of the configured engine."""

    voices = fields.List(fields.Nested(VoiceSchema), required=True)


class FollowUpSchema(Schema):
    """A frame the event was followed by."""

    seq = _int("the frame's sequence number")
    event = fields.Dict(required=True, metadata={"description": "the frame as the WebSocket sends it"})


class SimulatedSchema(Schema):
    """The event went through the pipeline; the WebSocket frame carries the same seq."""

    status = _ok()
    seq = _int("the frame's sequence number")
    event = fields.Dict(required=True, metadata={"description": "the event as the WebSocket sends it"})
    viewer_first_message = fields.Nested(FollowUpSchema, metadata={
        "description": "present when the chat was the viewer's first of the stream (or type was "
                       "viewer_first_message) and a viewer_first_message trigger fired: that frame, sent right "
                       "after the chat"})


class OpenApiSchema(Schema):
    """This document."""

    class Meta:
        unknown = INCLUDE

    openapi = _str()
