import pathlib
import sys

# build_ext.py lives at the project root; tests import it to check the cdef comes from the header
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
