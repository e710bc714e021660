"""Uploaded sounds: validation by content, safe names, atomic storage on disk, and serving them back."""

from .audio import CONTENT_TYPES, FORMATS, AudioInfo, validate_audio
from .names import MAX_NAME_CHARS, is_sound_name, sanitize_filename
from .serve import serve_sound
from .store import MediaStore
from .upload import Upload, read_upload

__all__ = [
    "CONTENT_TYPES", "FORMATS", "MAX_NAME_CHARS", "AudioInfo", "MediaStore", "Upload", "is_sound_name",
    "read_upload", "sanitize_filename", "serve_sound", "validate_audio",
]
