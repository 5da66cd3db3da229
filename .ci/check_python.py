"""Refuse a virtual environment whose Python is not the one requirements.lock was resolved for.

A lock resolved for 3.11 can name wheels that do not exist, or were never tested, on another Python; say so
before pip fails halfway with a less helpful message. Standard library only: it runs before anything is installed.
"""
import re
import sys

lock = sys.argv[1] if len(sys.argv) > 1 else "requirements.lock"
text = open(lock, encoding="utf-8").read()
match = re.search(r"--python-version (\d+\.\d+)", text)
have = "%d.%d" % sys.version_info[:2]
if match and match.group(1) != have:
    sys.exit(f"{lock} was resolved for Python {match.group(1)}, but {sys.executable} is Python {have}: "
             f"remove the venv and run `make setup PYTHON=python{match.group(1)}`, or resolve a lock for "
             f"{have} with `make lock LOCK_PYTHON={have}`")
