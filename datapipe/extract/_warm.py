"""Imported by the extraction pool's fork server, so every worker forks with the parsers already loaded.

Importing unstructured's partitioners and loading its spaCy model take seconds per process; done once
in the fork server, a worker starts in a fraction of a second however many pools a process opens.
Failures are left for the first file to report, with its install line.
"""

from __future__ import annotations

import contextlib

from datapipe.errors import MissingDependencyError
from datapipe.extract import _ensure_offline_spacy

with contextlib.suppress(MissingDependencyError, ImportError):
    _ensure_offline_spacy()
    import unstructured.nlp.tokenize as _tok
    import unstructured.partition.auto  # noqa: F401
    import unstructured.partition.docx  # noqa: F401
    import unstructured.partition.html  # noqa: F401
    import unstructured.partition.md  # noqa: F401
    import unstructured.partition.pdf  # noqa: F401
    import unstructured.partition.pptx  # noqa: F401
    import unstructured.partition.text  # noqa: F401

    _tok._get_nlp()
