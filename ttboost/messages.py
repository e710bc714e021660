"""Human texts of status and error frames in Russian and English; apps match on state/code, never on these."""

from __future__ import annotations

from typing import Final

LANGUAGES: Final = ("ru", "en")

_TEXTS: Final[dict[str, tuple[str, str]]] = {
    # status states
    "idle": ("TikTok не подключён", "TikTok is not connected"),
    "connecting": ("Подключаемся к эфиру @{user}…", "Connecting to @{user}'s LIVE…"),
    "connected": ("Подключено к эфиру @{user}", "Connected to @{user}'s LIVE"),
    "waiting_for_live": ("@{user} сейчас не в эфире, ждём начала", "@{user} is not LIVE; waiting for the stream"),
    "reconnecting": ("Связь прервалась, переподключаемся", "Connection lost; reconnecting"),
    # "reconnecting" when no connection was made at all (offline, DNS, refused, sign server down)
    "tiktok_unreachable": ("Нет связи с TikTok ({reason}), пробуем снова", "TikTok cannot be reached ({reason}); "
                           "trying again"),
    "live_ended": ("Эфир @{user} завершён", "@{user}'s LIVE has ended"),
    "error": ("Ошибка подключения к TikTok", "TikTok connection error"),
    # error codes
    "license_expired": ("Лицензия истекла или не активна: активируйте новый ключ",
                        "Your license has expired or is not active: redeem a new key"),
    "tiktok_user_not_found": ("Пользователь TikTok @{user} не найден", "TikTok user @{user} was not found"),
    "tiktok_offline": ("@{user} сейчас не в эфире", "@{user} is not LIVE now"),
    "sign_rate_limited": ("Сервер подписи ограничил запросы, повтор через {retry} с",
                          "The sign server is rate limiting; retrying in {retry} s"),
    "tiktok_blocked": ("TikTok отклонил подключение (блокировка или возрастное ограничение)",
                       "TikTok refused the connection (blocked or age restricted)"),
    "tiktok_connection_lost": ("Соединение с TikTok потеряно", "The TikTok connection was lost"),
    "tiktok_username_missing": ("Укажите имя пользователя TikTok в настройках",
                                "Set your TikTok username in the settings"),
    "bad_request": ("Неверное сообщение", "Malformed message"),
    "busy": ("Сервер занят, попробуйте ещё раз", "The server is busy, try again"),  # cluster: no home in time
}


def text(code: str, language: str, **values: object) -> str:
    ru, en = _TEXTS.get(code, (code, code))
    template = en if language == "en" else ru
    try:
        return template.format(**values)
    except (KeyError, IndexError):
        return template


def pick_language(accept_language: str | None, default: str) -> str:
    """The first of ru/en named in Accept-Language (quality order is the order written, as apps send it)."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        for lang in LANGUAGES:
            if tag == lang or tag.startswith(lang + "-"):
                return lang
    return default
