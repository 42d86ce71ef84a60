import sys
from pathlib import Path

import pytest

# tests/ helpers (book_files) importable without making tests a package
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def executed_book(tmp_path_factory):
    """The book's chapters, each executed once at smoke scale (see executed_book.py)."""
    from executed_book import ExecutedBook

    return ExecutedBook(tmp_path_factory.mktemp("executed"))
