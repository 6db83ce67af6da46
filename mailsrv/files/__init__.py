"""Big attachments through links: a user uploads a file, mail carries a download link (docs/files.md).

``links`` keeps the link index and the files (blocking), ``service`` serves them to a loop,
``http`` adds the upload and download routes to the JMAP listener; expired links are swept by
the workers (one at a time).
"""

from __future__ import annotations

from mailsrv.files.links import FileLink, FileLinkError, LinkStore, OverQuota, TooLarge, files_root
from mailsrv.files.service import FileLinks

__all__ = ["FileLink", "FileLinkError", "FileLinks", "LinkStore", "OverQuota", "TooLarge", "files_root"]
