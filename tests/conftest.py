"""Shared fixtures. Sandbox fixtures live in their own plugin modules, one per outside system."""

pytest_plugins: list[str] = [
    "tests.fixtures_stripe",
    "tests.fixtures_dolibarr",
    "tests.fixtures_dolibarr_client",
    "tests.fixtures_remotes",
    "tests.fixtures_aipress24",
    "tests.fixtures_browser",
    "tests.fixtures_mariadb",
]
