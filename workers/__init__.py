"""Worker processes: claim loop, leg execution, exchange adapters."""
