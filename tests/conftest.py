import sys
from pathlib import Path

# tests/ helpers (book_files) importable without making tests a package
sys.path.insert(0, str(Path(__file__).parent))
