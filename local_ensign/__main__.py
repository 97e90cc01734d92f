"""``python -m local_ensign``: see ``local_ensign.cli``."""

import logging
import os
import sys

from .cli import main

status = main()
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
# Everything is closed and flushed. Leave without the interpreter's final garbage
# collection: there, grpcio 1.59's asyncio support joins its completion-queue poller
# thread from a finaliser, which can spin forever after a busy server has stopped.
os._exit(status)
