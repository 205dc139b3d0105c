"""Jobs: the one way in (submit, await), claims and leases, the engine, dispatcher and workers."""
