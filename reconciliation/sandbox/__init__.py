"""Runnable stand-ins for the outside systems (Dolibarr, Stripe), used by the demo, the tests
and the benchmarks. They listen on loopback only."""
