"""Reconciliation: find every difference between the sources and Dolibarr (`detect`, `job`), and
the fixes the console can apply to them (`fixes`)."""
