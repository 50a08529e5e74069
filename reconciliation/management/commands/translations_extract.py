"""`manage.py translations_extract [-l fr]`: Django's `makemessages` for the console, into the
app's catalogue `reconciliation/locale/<lang>/LC_MESSAGES/django.po`, with the strings of the
app's Python and of the project's templates (`templates/`, outside the app) together.

Plain `makemessages` cannot do that: run from the project it puts everything in `LOCALE_PATHS`
(`locale/` at the top), run from the app it never sees `templates/` and marks their strings
obsolete. Options are makemessages' own; without `-l`, every language of `LANGUAGES` but
English. Then translate the new entries and run `compilemessages` (docs/console.md)."""

from __future__ import annotations

import os
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.management.commands import makemessages
from django.core.management.utils import is_ignored_path

SOURCE_LANGUAGE = "en"


class Command(makemessages.Command):
    help = (
        "makemessages for the app's Python and the project's templates, into "
        "reconciliation/locale (every language but English unless -l is given)."
    )

    def handle(self, *args, **options):
        app_dir = Path(apps.get_app_config("reconciliation").path)
        if not options["locale"] and not options["all"]:
            options["locale"] = [
                code for code, _name in settings.LANGUAGES if code != SOURCE_LANGUAGE
            ]
        (app_dir / "locale").mkdir(exist_ok=True)
        # makemessages creates the first of LOCALE_PATHS, wherever it runs; leave no empty one.
        created = [Path(path) for path in settings.LOCALE_PATHS if not Path(path).exists()]
        self.templates_dir = Path(settings.BASE_DIR) / "templates"
        self.app_locale_dir = str(app_dir / "locale")
        cwd = Path.cwd()
        os.chdir(app_dir)
        try:
            super().handle(*args, **options)
        finally:
            os.chdir(cwd)
            for path in created:
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()

    def find_files(self, root):
        files = super().find_files(root)
        if os.path.abspath(root) != os.path.abspath("."):
            return files
        for dirpath, dirnames, filenames in os.walk(self.templates_dir):
            dirnames[:] = sorted(
                name
                for name in dirnames
                if not is_ignored_path(os.path.join(dirpath, name), self.ignore_patterns)
            )
            for filename in sorted(filenames):
                path = os.path.join(dirpath, filename)
                if os.path.splitext(filename)[1] not in self.extensions or is_ignored_path(
                    path, self.ignore_patterns
                ):
                    continue
                files.append(
                    self.translatable_file_class(
                        os.path.relpath(dirpath), filename, self.app_locale_dir
                    )
                )
        return sorted(files)
