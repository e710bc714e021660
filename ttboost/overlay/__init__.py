"""The OBS overlay (spec §9): its keys, its page, its read-only socket."""
