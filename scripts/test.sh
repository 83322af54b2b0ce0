#!/usr/bin/env bash
# Set up (once) and run the test suite. Extra arguments go to pytest, e.g. `-m slow`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
