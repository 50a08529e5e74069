"""`/documents`: build, download, list and upload files (75-79, 85-88, 156)."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr import documents, views
from reconciliation.sandbox.dolibarr.errors import ApiError, required
from reconciliation.sandbox.dolibarr.params import body, optional_int, text
from reconciliation.sandbox.dolibarr.store import Store
from reconciliation.sandbox.dolibarr.templates import render

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox

SOURCE = "api_documents.class.php"


def register(api: DolibarrSandbox) -> None:
    api.route("PUT", "/documents/builddoc", build_document)
    api.route("GET", "/documents/download", download_document)
    api.route("GET", "/documents", list_documents)
    api.route("POST", "/documents/upload", upload_document)


def _directory(modulepart: str) -> str:
    directory = documents.MODULE_DIRECTORIES.get(modulepart.lower())
    if directory is None:
        raise ApiError(500, f"Modulepart {modulepart} not implemented yet.", source=f"{SOURCE}:780")
    return directory


def build_document(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """(Re)generate an invoice PDF; the answer carries it in base64 (75, 77). An invoice ref
    that does not exist is a 404 "Invoice not found" (156)."""
    data = body(request)
    for name in ("modulepart", "original_file"):
        if not data.get(name):
            raise required(name)
    modulepart = str(data["modulepart"])
    if documents.MODULE_DIRECTORIES.get(modulepart.lower()) != "facture":
        raise ApiError(403, "Generation not available for this modulepart", source=f"{SOURCE}:260")
    ref = str(data["original_file"]).split("/", 1)[0]
    with api.store.lock:
        invoice = next((row for row in api.store.invoices.values() if row.display_ref == ref), None)
        if invoice is None:
            raise ApiError(404, "Invoice not found", source=f"{SOURCE}:210")
        stored = documents.store_invoice_pdf(api.store, invoice)
    return render(
        "document.build",
        {
            "filename": stored.relpath.rsplit("/", 1)[-1],
            "filesize": len(stored.content),
            "content": base64.b64encode(stored.content).decode(),
            "langcode": text(data.get("langcode")) or "",
            "template": text(data.get("doctemplate")) or "sponge",
        },
    )


def download_document(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """A stored file in base64 (76, 88); a missing one is 404 "File not found" (79)."""
    modulepart = request.query.get("modulepart") or ""
    original_file = request.query.get("original_file") or ""
    if not modulepart:
        raise required("modulepart")
    if not original_file:
        raise required("original_file")
    if ".." in original_file:
        raise ApiError(400, f"Refused to deliver file {original_file}", source=f"{SOURCE}:105")
    relpath = f"{_directory(modulepart)}/{original_file.lstrip('/')}"
    with api.store.lock:
        stored = api.store.files.get(relpath)
        if stored is None:
            raise ApiError(404, "File not found", source=f"{SOURCE}:119")
        content = stored.content
    filename = relpath.rsplit("/", 1)[-1]
    return render(
        "document.download",
        {
            "filename": filename,
            "content-type": views.content_type(filename),
            "filesize": len(content),
            "content": base64.b64encode(content).decode(),
        },
    )


def _object_ref(
    store: Store, directory: str, object_id: int | None, ref: str | None
) -> tuple[int, str]:
    if directory == "facture":
        rows = {row.id: row.display_ref for row in store.invoices.values()}
        missing = "Invoice not found"
    elif directory == "commande":
        rows = {row.id: row.display_ref for row in store.orders.values()}
        missing = "Order not found"
    else:
        rows = {row.id: row.display_ref for row in store.shipments.values()}
        missing = "Shipment not found"
    if object_id is not None and object_id in rows:
        return object_id, rows[object_id]
    for candidate_id, candidate_ref in rows.items():
        if ref and candidate_ref == ref:
            return candidate_id, candidate_ref
    raise ApiError(404, missing, source=f"{SOURCE}:640")


def list_documents(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """The files of one object, as raw ECM objects (78). For shipments this build always
    answers 404, because it cannot resolve the shipment directory (87)."""
    modulepart = request.query.get("modulepart") or ""
    if not modulepart:
        raise required("modulepart")
    directory = _directory(modulepart)
    object_id = optional_int(request.query.get("id"))
    with api.store.lock:
        found_id, ref = _object_ref(api.store, directory, object_id, request.query.get("ref"))
        prefix = f"{directory}/{ref}/"
        stored = (
            []
            if directory == "expedition"
            else sorted(
                (item for path, item in api.store.files.items() if path.startswith(prefix)),
                key=lambda item: item.relpath,
            )
        )
        if not stored:
            raise ApiError(
                404,
                f"Search for modulepart {modulepart} with Id {found_id} or Ref {ref} does not "
                "return any document.",
                source=f"{SOURCE}:698",
            )
        return [views.document_entry(item, position + 1) for position, item in enumerate(stored)]


def upload_document(api: DolibarrSandbox, request: Request) -> str:
    """Store a file under the object's directory; answers the stored file name (85). A shipment's
    files live in `expedition/sending/<ref>/`."""
    data = body(request)
    for name in ("filename", "modulepart"):
        if not data.get(name):
            raise required(name)
    filename = str(data["filename"])
    if "/" in filename or ".." in filename:
        raise ApiError(400, f"Bad value for filename {filename}", source=f"{SOURCE}:820")
    directory = _directory(str(data["modulepart"]))
    content = _decode(data.get("filecontent") or "", text(data.get("fileencoding")) or "")
    ref = text(data.get("ref"))
    with api.store.lock:
        if ref:
            object_id, ref = _object_ref(api.store, directory, None, ref)
            folder = (
                f"{directory}/sending/{ref}" if directory == "expedition" else f"{directory}/{ref}"
            )
        else:
            object_id = None
            subdir = (text(data.get("subdir")) or "").strip("/")
            folder = f"{directory}/{subdir}" if subdir else directory
        relpath = f"{folder}/{filename}"
        if relpath in api.store.files and not optional_int(data.get("overwriteifexists")):
            raise ApiError(
                500, f"File with name '{filename}' already exists.", source=f"{SOURCE}:880"
            )
        documents.put_file(
            api.store,
            relpath,
            content,
            generated=False,
            src_object_type=directory,
            src_object_id=object_id,
        )
    return filename


def _decode(content: str, encoding: str) -> bytes:
    if encoding.lower() == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(500, "Failed to decode file content", source=f"{SOURCE}:860") from exc
    return content.encode("utf-8")
