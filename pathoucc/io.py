"""Deprecated alias of :mod:`pathoucc.files` (``io`` shadows the standard library's module).

Kept only until ``slides/tissue.py`` (being edited elsewhere) imports :mod:`pathoucc.files`; then delete this file.
"""

from pathoucc.files import atomic_path, ensure_writable_dir, write_json, write_text

__all__ = ["atomic_path", "ensure_writable_dir", "write_json", "write_text"]
