"""State changes: the only code that views, admin, tasks and the sync engine call to change a
record. Each function is one transaction that also writes its audit event; none calls the
network."""
