"""Request bodies of the account and license endpoints; the same schemas validate requests and describe OpenAPI."""

from __future__ import annotations

from typing import Any, Final

from marshmallow import ValidationError, fields, post_load, validate

from .accounts import PASSWORD_MAX_BYTES, PASSWORD_MIN_BYTES, check_password, normalize_username
from .bodies import BodySchema
from .security import normalize_license_key

ORDER_ID_MAX: Final = 128  # characters (spec §3)
TTL_DAYS_MAX: Final = 3650  # days (spec §3)
LICENSE_KEY_MAX: Final = 64  # characters before normalization; real keys are 18
AMOUNT_MAX: Final = 2**63 - 1  # minor units; SQLite's INTEGER holds no more


def _with_docs(kwargs: dict[str, Any], **openapi: Any) -> dict[str, Any]:
    """kwargs with OpenAPI keywords added to the field's metadata (the caller's own metadata wins)."""
    return {**kwargs, "metadata": {**openapi, **kwargs.get("metadata", {})}}


class Username(fields.String):
    """A TikTok handle, normalized on load (trim, leading @ removed, lower case) and checked."""

    def __init__(self, **kwargs: Any) -> None:
        # The documented form is the normalized one; spaces around it, and upper case, are accepted too.
        super().__init__(**_with_docs(kwargs, pattern=r"^@?[A-Za-z0-9._]{2,24}$"))

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalize_username(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class Password(fields.String):
    """6-72 bytes of UTF-8 (bcrypt's limit)."""

    def __init__(self, **kwargs: Any) -> None:
        # In characters, as JSON Schema counts: 6 characters are at least 6 bytes; the 72 is exact for ASCII.
        super().__init__(**_with_docs(kwargs, minLength=PASSWORD_MIN_BYTES, maxLength=PASSWORD_MAX_BYTES))

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return check_password(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class LicenseKey(fields.String):
    """A license key as typed: upper-cased and stripped of spaces on load."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_with_docs(kwargs, maxLength=LICENSE_KEY_MAX, pattern=r"\S"))

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > LICENSE_KEY_MAX:
            raise ValidationError(f"at most {LICENSE_KEY_MAX} characters")
        key = normalize_license_key(text)
        if not key:
            raise ValidationError("Field may not be blank.")
        return key


def _username() -> Username:
    return Username(required=True, metadata={"description": "TikTok handle; '@', spaces and case are ignored",
                                             "example": "streamer_one"})


def _license_key() -> LicenseKey:
    return LicenseKey(required=True, metadata={"description": "license key TTB-XXXX-XXXX-XXXX (case and spaces "
                                                              "ignored)", "example": "TTB-7K2M-Q9XD-4HRP"})


class RedeemLicenseSchema(BodySchema):
    """POST /v2/auth/redeem-license: first login with a license key."""

    username = _username()
    password = Password(required=True, metadata={"description": "new account: the password to set (6-72 bytes); "
                                                                "existing account: its password"})
    license_key = _license_key()


class LoginSchema(BodySchema):
    """POST /v2/auth/login."""

    username = _username()
    password = Password(required=True, metadata={"description": "account password (6-72 bytes)"})


class PasswordChangeSchema(BodySchema):
    """POST /v2/auth/password: revokes every earlier token."""

    current_password = Password(required=True, metadata={"description": "the password in use now"})
    new_password = Password(required=True, metadata={"description": "the new password (6-72 bytes)"})


class LegacyLoginSchema(BodySchema):
    """POST /auth/login (first mobile build): log in with the license key alone."""

    license_key = _license_key()


class RedeemSchema(BodySchema):
    """POST /v2/license/redeem: bind another key (renewal) to the logged-in user."""

    license_key = _license_key()


class IssueWebSchema(BodySchema):
    """POST /v2/license/issue-web: the web shop issues one key per order (idempotent by order_id)."""

    order_id = fields.String(required=True, validate=validate.Length(min=1, max=ORDER_ID_MAX),
                             metadata={"description": "shop order id; the same order always gets the same key"})
    plan = fields.String(required=True, validate=validate.Length(min=1, max=64),
                         metadata={"description": "plan id from the server config",
                                   "example": "nova_streamer_one_mobile"})
    ttl_days = fields.Integer(strict=True, load_default=30, validate=validate.Range(min=1, max=TTL_DAYS_MAX),
                              metadata={"description": "days from issue until the key expires (default 30)"})
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=254),
                         metadata={"description": "buyer's e-mail, kept with the license"})
    amount = fields.Integer(strict=True, load_default=None, allow_none=True,
                            validate=validate.Range(0, AMOUNT_MAX),
                            metadata={"description": "amount paid, in minor units (cents, kopecks)"})
    currency = fields.String(load_default=None, allow_none=True,
                             validate=validate.Regexp(r"^[A-Za-z]{3}$", error="3 letters, e.g. USD"),
                             metadata={"description": "ISO 4217 currency code"})

    @post_load
    def _upper_currency(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("currency"):
            data["currency"] = data["currency"].upper()
        return data
