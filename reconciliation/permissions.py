"""Who may do what in the console: the finance roles (created as groups by migration 0007,
described in docs/permissions.md) and the check for console views outside the admin.

Django's own `permission_required` sends a logged-in user who lacks the permission back to the
login page, which logs them in again and sends them back: a loop, where the answer should be
"forbidden". `permission_required_403` answers 403 instead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

FINANCE_VIEWER = "Finance viewer"
FINANCE_OPERATOR = "Finance operator"
FINANCE_ADMIN = "Finance admin"

# Highest first.
FINANCE_ROLES = (FINANCE_ADMIN, FINANCE_OPERATOR, FINANCE_VIEWER)

View = Callable[..., HttpResponse]


def permission_required_403(perm: str) -> Callable[[View], View]:
    """For a function view: an anonymous visitor is sent to the admin login (and back after);
    a logged-in user without `perm` (an "app_label.codename") gets 403."""

    def decorator(view: View) -> View:
        @wraps(view)
        def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), login_url=reverse("admin:login"))
            if not request.user.has_perm(perm):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return checked

    return decorator


def user_role(user) -> str:
    """The highest finance role of `user`, for display: a group name, or "" for none. A
    superuser, who can do all a Finance admin can, is shown as one."""
    if not user.is_authenticated:
        return ""
    if user.is_superuser:
        return FINANCE_ADMIN
    names = set(user.groups.filter(name__in=FINANCE_ROLES).values_list("name", flat=True))
    return next((role for role in FINANCE_ROLES if role in names), "")
