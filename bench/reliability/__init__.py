"""`make reliability`: faults injected under load, and what became of every job."""
