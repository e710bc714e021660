"""Stream history: figures recorded as a LIVE runs, their reads, the CSV export and rehearsals (spec §8)."""
