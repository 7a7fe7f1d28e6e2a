import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
sys.path.insert(0, str(Path(__file__).resolve().parent))
