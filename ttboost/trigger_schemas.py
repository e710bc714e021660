"""Request schemas of /v2/triggers/*: what a trigger may say, checked before anything is stored."""

from __future__ import annotations

from typing import Any, Callable, Final

from marshmallow import ValidationError, fields, post_load, validate

from .accounts import normalize_username
from .bodies import NUL_MESSAGE, BodySchema
from .pipeline.events import TRIGGER_EVENT_TYPES
from .triggers import CONDITIONS, PLACEHOLDERS, TEMPLATE_RE

COOLDOWN_MAX: Final = 3600  # seconds
PRIORITY_LIMIT: Final = 1_000_000  # |priority|; only the order matters
NAME_MAX_CHARS: Final = 80  # characters
TEMPLATE_MAX_CHARS: Final = 300  # characters
TEXT_VALUE_MAX_CHARS: Final = 100  # characters of a text condition value
INT_VALUE_MAX: Final = 1_000_000_000  # counts, diamonds, likes
ID_MAX: Final = 2**63 - 1  # SQLite's INTEGER: a larger id matches no row and cannot even be a query parameter
ACTIONS: Final = ("play_sound", "tts")


class PlaySoundParams(BodySchema):
    sound_filename = fields.String(required=True, validate=validate.Length(1, 80))
    volume = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, 100))


class TtsParams(BodySchema):
    text_template = fields.String(required=True, validate=validate.Length(1, TEMPLATE_MAX_CHARS))
    voice_id = fields.String(allow_none=True, validate=validate.Length(max=100))


class TriggerSetSchema(BodySchema):
    """POST /v2/triggers/set. After load: condition_value is its stored text ("" for always) and
    action_params (when given) is checked against the action."""

    id = fields.Integer(strict=True, allow_none=True, validate=validate.Range(1, ID_MAX))
    event_type = fields.String(required=True, validate=validate.OneOf(TRIGGER_EVENT_TYPES))
    condition_key = fields.String(load_default="always")
    condition_value = fields.Raw(allow_none=True)
    action = fields.String(required=True, validate=validate.OneOf(ACTIONS))
    action_params = fields.Dict(keys=fields.String())
    enabled = fields.Boolean()
    priority = fields.Integer(strict=True, validate=validate.Range(-PRIORITY_LIMIT, PRIORITY_LIMIT))
    cooldown_seconds = fields.Integer(strict=True, validate=validate.Range(0, COOLDOWN_MAX))
    once_per_stream = fields.Boolean()
    trigger_name = fields.String(validate=validate.Length(max=NAME_MAX_CHARS))

    def __init__(self, *, voice_known: Callable[[str], bool] = lambda _voice: True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._voice_known = voice_known

    @post_load
    def _check(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        kinds = CONDITIONS[data["event_type"]]
        if data["condition_key"] not in kinds:
            raise ValidationError({"condition_key": [f"must be one of: {', '.join(kinds)}"]})
        try:
            data["condition_value"] = _condition_text(kinds[data["condition_key"]], data.get("condition_value"))
        except ValueError as exc:
            raise ValidationError({"condition_value": [str(exc)]}) from None
        if "action_params" in data:
            data["action_params"] = self._params(data["action"], data["action_params"])
        if "id" in data and data["id"] is None:
            del data["id"]
        return data

    def _params(self, action: str, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            params = (PlaySoundParams() if action == "play_sound" else TtsParams()).load(raw)
        except ValidationError as exc:
            raise ValidationError({"action_params": exc.messages}) from None
        params = {k: v for k, v in params.items() if v not in (None, "")}
        errors: dict[str, list[str]] = {}
        if "text_template" in params:
            unknown = sorted({name for name in TEMPLATE_RE.findall(params["text_template"])
                              if name not in PLACEHOLDERS})
            if unknown:
                allowed = ", ".join("{%s}" % p for p in PLACEHOLDERS)
                errors["text_template"] = [f"unknown placeholder {{{unknown[0]}}}; allowed: {allowed}"]
        if "voice_id" in params and not self._voice_known(params["voice_id"]):
            errors["voice_id"] = ["unknown voice"]
        if errors:
            raise ValidationError({"action_params": errors})
        return params


class TriggerIdSchema(BodySchema):
    id = fields.Integer(strict=True, required=True, validate=validate.Range(1, ID_MAX))


class TriggerEnabledSchema(TriggerIdSchema):
    enabled = fields.Boolean(required=True)


def _condition_text(kind: str | None, value: Any) -> str:
    """The stored text of a condition value of that kind; ValueError with a message for the client."""
    if kind is None:
        return ""  # "always" takes no value; whatever the app sends along is meaningless
    if value is None or value == "":
        raise ValueError("required for this condition")
    if kind == "int":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT_VALUE_MAX:
            raise ValueError("must be a whole number of at least 1")
        return str(value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    if kind == "username":
        return normalize_username(value)  # its ValueError names the rule
    text = value.strip()
    if not 1 <= len(text) <= TEXT_VALUE_MAX_CHARS:
        raise ValueError(f"must be 1–{TEXT_VALUE_MAX_CHARS} characters")
    return text
