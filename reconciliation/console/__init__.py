"""The finance console's own pages, where the admin is a poor fit (docs/console.md): tables
built with django-tables2 and filtered with django-filter, in a layout of their own
(`templates/console/base.html`) that links to the admin pages the console still uses.

Every list page reads one page of rows with a constant number of queries, whatever the page
size, and never counts the table (`LazyPaginator`). Every action is a CSRF-protected POST,
checked with `permission_required_403`, and audited with the person as the actor.
"""
