"""The three finance roles (docs/permissions.md) as groups.

The permissions are created here first: `post_migrate`, which normally creates them, runs only
after every migration, and a fresh database has none yet. Running again (or over groups made by
hand) sets each group to exactly its role, so that a "Finance viewer" can never keep a write
permission from an earlier hand-made group. Reversing removes the groups, not the permissions.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

FINANCE_VIEWER = "Finance viewer"
FINANCE_OPERATOR = "Finance operator"
FINANCE_ADMIN = "Finance admin"

OPERATOR_CODENAMES = ["act_on_mismatch", "retry_record", "reprocess_event", "run_job"]
ADMIN_CODENAMES = ["manage_configuration"]
ADMIN_AUTH_CODENAMES = [
    "view_user",
    "add_user",
    "change_user",
    "view_group",
    "add_group",
    "change_group",
]


def _create_permissions(apps):
    for label in ("auth", "reconciliation"):
        app_config = apps.get_app_config(label)
        # Historical app configs have no models module, and create_permissions skips an app
        # without one.
        app_config.models_module = True
        try:
            create_permissions(app_config, verbosity=0, apps=apps)
        finally:
            app_config.models_module = None


def finance_groups_create(apps, schema_editor):
    _create_permissions(apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    app_perms = Permission.objects.filter(content_type__app_label="reconciliation")

    viewer = list(app_perms.filter(codename__startswith="view_"))
    operator = viewer + list(app_perms.filter(codename__in=OPERATOR_CODENAMES))
    admin = (
        operator
        + list(app_perms.filter(codename__in=ADMIN_CODENAMES))
        + list(
            Permission.objects.filter(
                content_type__app_label="auth", codename__in=ADMIN_AUTH_CODENAMES
            )
        )
    )
    expected = len(OPERATOR_CODENAMES) + len(ADMIN_CODENAMES) + len(ADMIN_AUTH_CODENAMES)
    if len(admin) - len(viewer) != expected:
        raise RuntimeError("a finance permission is missing; were the models' Meta changed?")

    for name, permissions in (
        (FINANCE_VIEWER, viewer),
        (FINANCE_OPERATOR, operator),
        (FINANCE_ADMIN, admin),
    ):
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)


def finance_groups_remove(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name__in=[FINANCE_VIEWER, FINANCE_OPERATOR, FINANCE_ADMIN]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("reconciliation", "0006_permissions"),
    ]

    operations = [
        migrations.RunPython(finance_groups_create, finance_groups_remove),
    ]
